//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "gator-ota",
    version,
    about = "Over-the-air firmware delivery for Data Gators on SCARECRO gateways"
)]
pub struct Cli {
    /// How log lines are written to stderr: `text` (for journald and people)
    /// or `json` (one object per line, with the job's fields, for log shippers).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "GATOR_OTA_LOG_FORMAT",
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: receive firmware_image messages, install images, confirm receipt.
    Run(SettingsArgs),
    /// Load and validate the settings, then print them with secrets redacted.
    CheckConfig(SettingsArgs),
    /// Put a sample image in a local (file://) bucket, publish a firmware_image
    /// for it and print the confirm_receipt that comes back.
    PublishSample(SampleArgs),
    /// Show the fleet: each Data Gator's version and rollout state, health,
    /// the last jobs. Asks the running service, or reads its files when it
    /// does not answer.
    Status(StatusArgs),
    /// Make an Ed25519 signing key pair for firmware images.
    Keygen {
        /// Folder for gator-ota-signing.pem and gator-ota-signing.pub.pem.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Sign a firmware image: writes <IMAGE>.sig and prints the base64 form.
    Sign {
        /// PKCS#8 PEM private key (from `keygen` or `openssl genpkey -algorithm ed25519`).
        #[arg(long)]
        key: PathBuf,
        /// The image to sign.
        image: PathBuf,
        /// Where to write the signature (default: <IMAGE>.sig).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// TOML settings layered over the embedded defaults.
    #[arg(long, env = gator_ota_settings::ENV_SETTINGS_FILE)]
    pub settings: Option<PathBuf>,
    /// A SCARECRO gateway's configs/ folder to run from; its layer sits
    /// between the defaults and the settings file.
    #[arg(long, value_name = "DIR")]
    pub scarecro_configs: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// The firmware server to ask, host:port (default: its first listen
    /// address, over loopback when it listens on all).
    #[arg(long, value_name = "HOST:PORT")]
    pub url: Option<String>,
    /// Print the report as JSON, as /status.json has it.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SampleArgs {
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// Size of the sample image in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub size: u64,
    /// How long to wait for the confirm_receipt.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}
