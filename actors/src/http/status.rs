//! The fleet's endpoints on the firmware server: `/status.json`,
//! `/healthz`, `/metrics` and the status page at `/`.
//!
//! Each asks the fleet actor for one [`StatusReport`] and renders it. With
//! the fleet view off they fall through to the image handler, as any other
//! path does.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use tracing::warn;

use super::routes::{State, serve};
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

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    for (path, view) in [
        ("/status.json", View::Json),
        ("/healthz", View::Health),
        ("/metrics", View::Metrics),
        ("/", View::Page),
    ] {
        cfg.route(
            path,
            web::get().to(move |req: HttpRequest, state: web::Data<State>| show(req, state, view)),
        );
    }
}

async fn show(req: HttpRequest, state: web::Data<State>, view: View) -> HttpResponse {
    let Some(fleet) = state.fleet.clone() else {
        return serve(req, state).await;
    };
    let report = match fleet.send(GetReport).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "the device registry did not answer");
            return HttpResponse::ServiceUnavailable()
                .content_type("text/plain")
                .body("the device registry is not running\n");
        }
    };
    render(&report, view, &state)
}

fn render(report: &StatusReport, view: View, state: &State) -> HttpResponse {
    let mut res = match view {
        View::Health if !report.health.as_ref().is_some_and(|h| h.ok) => {
            HttpResponse::ServiceUnavailable()
        }
        _ => HttpResponse::Ok(),
    };
    res.insert_header((header::CACHE_CONTROL, "no-store"));
    match view {
        View::Json | View::Health => {
            let body = match view {
                View::Json => serde_json::to_string_pretty(report),
                _ => serde_json::to_string_pretty(&report.health),
            };
            res.content_type("application/json")
                .body(body.unwrap_or_default())
        }
        View::Metrics => res
            .content_type(prometheus::CONTENT_TYPE)
            .body(prometheus::render(report, state.log.metrics())),
        View::Page => res
            .content_type("text/html; charset=utf-8")
            .body(page::render(report)),
    }
}
