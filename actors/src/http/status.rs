//! The fleet's endpoints on the firmware server: `/status.json`,
//! `/healthz`, `/metrics` and the status page at `/`.
//!
//! Each asks the fleet actor for one [`StatusReport`] and renders it. With
//! the fleet view off they are not there: the path goes to the image
//! handler, as any other path does.

use actix::Recipient;
use tracing::warn;

use super::reply::Reply;
use super::routes::State;
use crate::fleet::report::StatusReport;
use crate::fleet::{GetReport, page, prometheus};

/// Which rendering of the report a route gives.
#[derive(Debug, Clone, Copy)]
pub(crate) enum View {
    Json,
    Health,
    Metrics,
    Page,
}

/// The view published at `path`, if one is.
pub(crate) fn view(path: &str) -> Option<View> {
    Some(match path {
        "/status.json" => View::Json,
        "/healthz" => View::Health,
        "/metrics" => View::Metrics,
        "/" => View::Page,
        _ => return None,
    })
}

pub(crate) async fn show(fleet: &Recipient<GetReport>, view: View, state: &State) -> Reply {
    match fleet.send(GetReport).await {
        Ok(report) => render(&report, view, state),
        Err(e) => {
            warn!(error = %e, "the device registry did not answer");
            Reply::new(503).text("text/plain", "the device registry is not running\n")
        }
    }
}

fn render(report: &StatusReport, view: View, state: &State) -> Reply {
    let status = match view {
        View::Health if !report.health.as_ref().is_some_and(|h| h.ok) => 503,
        _ => 200,
    };
    let res = Reply::new(status).header("Cache-Control", "no-store");
    match view {
        View::Json | View::Health => {
            let body = match view {
                View::Json => serde_json::to_string_pretty(report),
                _ => serde_json::to_string_pretty(&report.health),
            };
            res.text("application/json", body.unwrap_or_default())
        }
        View::Metrics => res.text(
            prometheus::CONTENT_TYPE,
            prometheus::render(report, state.log.metrics()),
        ),
        View::Page => res.text("text/html; charset=utf-8", page::render(report)),
    }
}
