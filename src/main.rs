//! `gator-ota`: over-the-air firmware delivery for Data Gators on a SCARECRO
//! gateway. The binary only parses the command line and hands over: the
//! pipeline lives in `gator-ota-actors`, the settings in `gator-ota-settings`.

mod cli;
mod run;
mod sample;
mod signing;
mod status;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    run::init_logging(cli.log_format);
    match cli.command {
        cli::Command::Run(args) => run::run(&args),
        cli::Command::CheckConfig(args) => run::check_config(&args),
        cli::Command::PublishSample(args) => sample::publish_sample(&args),
        cli::Command::Status(args) => status::status(&args),
        cli::Command::Keygen { out } => signing::keygen(&out),
        cli::Command::Sign { key, image, out } => signing::sign(&key, &image, out.as_deref()),
    }
}
