//! The man pages and shell completions, made from the same definition as
//! the parser so they never disagree with it (`gator-ota-gen`).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::cli::Cli;

/// Writes gator-ota's man pages or a shell's completions, for packaging.
#[derive(Debug, Parser)]
#[command(name = "gator-ota-gen", version)]
pub struct Gen {
    #[command(subcommand)]
    pub what: Generated,
}

#[derive(Debug, Subcommand)]
pub enum Generated {
    /// The man pages: gator-ota(1) and one per command, gator-ota-run(1), ...
    Man {
        /// Folder to write them into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
    },
    /// Completions for SHELL, to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

const MANUAL: &str = "gator-ota manual";

/// What the man page adds to what clap knows: the files and variables an
/// operator meets on a gateway, in roff.
const FILES_AND_ENVIRONMENT: &str = r#".SH ENVIRONMENT
.TP
\fBGATOR_OTA_SETTINGS\fR
The settings file when \fB\-\-settings\fR is not given.
.TP
\fBGATOR_OTA__\fISECTION\fB__\fIKEY\fR
Overrides one setting, e.g. \fBGATOR_OTA__SYSTEM__ID=gateway\-17\fR.
.TP
\fBAWS_REGION\fR, \fBAWS_DEFAULT_REGION\fR, \fBAWS_ENDPOINT_URL\fR, \fBAWS_ACCESS_KEY_ID\fR, \fBAWS_SECRET_ACCESS_KEY\fR, \fBAWS_SESSION_TOKEN\fR, \fBAWS_ALLOW_HTTP\fR
Set the S3 carrier's keys over the settings file; a \fBGATOR_OTA__\fR variable overrides them.
.TP
\fBGATOR_OTA_LOG\fR
Log level or filter, e.g. \fBdebug\fR (default \fBinfo\fR; \fBRUST_LOG\fR works too).
.TP
\fBGATOR_OTA_LOG_FORMAT\fR
\fBtext\fR (default) or \fBjson\fR, one object per line.
.SH FILES
.TP
\fI/etc/gator\-ota/settings.toml\fR
The gateway's settings, over the embedded defaults (\fBgator\-ota check\-config\fR prints them all).
.TP
\fI/etc/gator\-ota/gator\-ota.env\fR
Secrets for the systemd unit, as environment variables; readable by root only.
.TP
\fI/var/lib/gator\-ota\fR
The service's state: images, the pointer file, the job journal, MQTT persistence.
.TP
\fI/usr/share/doc/gator\-ota/README.md\fR
The full documentation.
"#;

pub fn generate(what: &Generated) -> ExitCode {
    let written = match what {
        Generated::Man { out } => man_pages(out),
        Generated::Completions { shell } => {
            // Into a buffer: clap_complete panics on a failed write.
            let mut buf = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "gator-ota", &mut buf);
            let mut out = std::io::stdout().lock();
            out.write_all(&buf).and_then(|()| out.flush())
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gator-ota-gen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// gator-ota.1, with the files and variables, and a page per visible command.
fn man_pages(dir: &Path) -> std::io::Result<()> {
    let in_dir =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(in_dir)?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        clap_mangen::Man::new(sub.clone())
            .manual(MANUAL)
            .generate_to(dir)
            .map_err(in_dir)?;
    }
    let man = clap_mangen::Man::new(cmd).manual(MANUAL);
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    page.extend_from_slice(FILES_AND_ENVIRONMENT.as_bytes());
    man.render_version_section(&mut page)?;
    std::fs::write(dir.join(man.get_filename()), page).map_err(in_dir)
}
