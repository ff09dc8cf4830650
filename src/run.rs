//! `run` and `check-config`.

use std::process::ExitCode;

use gator_ota_actors::{Plan, Service};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

use crate::cli::{LogFormat, SettingsArgs};

/// Log level from `GATOR_OTA_LOG` (or `RUST_LOG`), `info` when neither is set.
/// Logging starts before the settings are read, so that an error in them is
/// logged in the chosen format too; hence a flag and variable, not a setting.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("GATOR_OTA_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // The event's fields at the top level beside `message`, and every
        // span it happened in (`job` with msg_id, file_name, cloud_path)
        // under `spans`, so a shipper can filter on them directly.
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
}

/// Settings loaded and turned into a plan: the one road `run` and
/// `check-config` both take, so they refuse the same things.
fn load(args: &SettingsArgs) -> Option<(gator_ota_settings::Loaded, Plan)> {
    let loaded =
        gator_ota_settings::load_all(args.settings.as_deref(), args.scarecro_configs.as_deref());
    let loaded = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            error!("{e}");
            return None;
        }
    };
    match Plan::new(&loaded.settings) {
        Ok(plan) => Some((loaded, plan)),
        Err(e) => {
            error!("{e}");
            None
        }
    }
}

/// One line per SCARECRO config, so an operator sees at start-up what
/// gator-ota took over from the folder and what it leaves alone.
fn log_scarecro(report: &gator_ota_settings::scarecro::Report) {
    info!(folder = %report.dir.display(), system_id = %report.system_id, "running from a SCARECRO configuration folder");
    for u in &report.used {
        info!(file = %u.file, setting = %u.setting, "SCARECRO config used: {}", u.what);
    }
    for s in &report.skipped {
        info!(file = %s.file, name = %s.name, "SCARECRO config skipped: {}", s.reason);
    }
    for n in &report.notes {
        info!("SCARECRO note: {n}");
    }
}

pub fn run(args: &SettingsArgs) -> ExitCode {
    let Some((loaded, plan)) = load(args) else {
        return ExitCode::from(2);
    };
    if let Some(report) = &loaded.scarecro {
        log_scarecro(report);
    }
    for w in plan.warnings() {
        warn!("{w}");
    }
    let system = actix_rt::System::new();
    let outcome = system.block_on(async move {
        let service = Service::start(plan)?;
        let signal = wait_for_signal().await;
        info!(%signal, "shutting down");
        service.shutdown().await;
        Ok::<_, gator_ota_actors::StartError>(())
    });
    match outcome {
        Ok(()) => {
            info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn check_config(args: &SettingsArgs) -> ExitCode {
    let Some((loaded, plan)) = load(args) else {
        return ExitCode::from(2);
    };
    if let Some(report) = &loaded.scarecro {
        println!("{report}#");
    }
    for w in plan.warnings() {
        println!("# warning: {w}");
    }
    println!("# gator-ota settings: valid. Effective values, secrets redacted:\n");
    print!("{}", loaded.settings.to_redacted_toml());
    ExitCode::SUCCESS
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot watch SIGTERM; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}
