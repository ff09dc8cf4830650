//! `gator-ota-gen`: writes gator-ota's man pages and shell completions for
//! the packages (deploy/package-deb.sh). A binary of its own, so that the
//! service's binary, which must stay small on a Pi, carries neither
//! clap_mangen nor clap_complete; it compiles the service's own CLI
//! definition, so the pages always match it.

// Only the definition is used here, not what the commands do.
#[allow(dead_code)]
#[path = "../cli.rs"]
mod cli;
#[path = "../generate.rs"]
mod generate;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    generate::generate(&generate::Gen::parse().what)
}
