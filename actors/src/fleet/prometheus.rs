//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4),
//! written by hand: a handful of counters and gauges do not need a crate.

use std::fmt::Write;

use super::report::StatusReport;
use crate::metrics::Metrics;

/// The content type Prometheus expects for this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn render(report: &StatusReport, m: &Metrics) -> String {
    let mut out = String::new();
    jobs(&mut out, m);
    family(
        &mut out,
        "gator_ota_downloaded_bytes_total",
        "counter",
        "Bytes of firmware images downloaded from the bucket.",
    );
    let _ = writeln!(
        out,
        "gator_ota_downloaded_bytes_total {}",
        m.bytes_downloaded()
    );
    served(&mut out, m);
    device_messages(&mut out, m);
    devices(&mut out, report);
    staged(&mut out, report);
    family(
        &mut out,
        "gator_ota_mqtt_connected",
        "gauge",
        "1 while the MQTT carrier is connected to its broker.",
    );
    for c in &report.carriers {
        let _ = writeln!(
            out,
            "gator_ota_mqtt_connected{{carrier=\"{}\"}} {}",
            label(&c.name),
            u8::from(c.connected)
        );
    }
    if let Some(h) = &report.health {
        family(
            &mut out,
            "gator_ota_healthy",
            "gauge",
            "1 when GET /healthz answers 200.",
        );
        let _ = writeln!(out, "gator_ota_healthy {}", u8::from(h.ok));
        family(
            &mut out,
            "gator_ota_jobs_running",
            "gauge",
            "Firmware jobs running now.",
        );
        let _ = writeln!(out, "gator_ota_jobs_running {}", h.running_jobs);
    }
    out
}

fn jobs(out: &mut String, m: &Metrics) {
    family(
        out,
        "gator_ota_jobs_total",
        "counter",
        "Firmware jobs ended, by outcome (INSTALLED, FAILED) and failure reason.",
    );
    for ((outcome, reason), n) in m.jobs() {
        let _ = writeln!(
            out,
            "gator_ota_jobs_total{{outcome=\"{}\",reason=\"{}\"}} {n}",
            label(&outcome),
            label(&reason)
        );
    }
}

fn device_messages(out: &mut String, m: &Metrics) {
    let (taken, dropped) = m.device_messages();
    family(
        out,
        "gator_ota_device_messages_total",
        "counter",
        "Data Gator messages (ota_status, ota, tlm) the device registry took.",
    );
    let _ = writeln!(out, "gator_ota_device_messages_total {taken}");
    family(
        out,
        "gator_ota_device_messages_dropped_total",
        "counter",
        "Data Gator messages dropped because ingress's in-memory queue of them was full.",
    );
    let _ = writeln!(out, "gator_ota_device_messages_dropped_total {dropped}");
    let (bytes, serialise, write) = m.registry_save();
    family(
        out,
        "gator_ota_registry_bytes",
        "gauge",
        "Size of fleet.json at its last save.",
    );
    let _ = writeln!(out, "gator_ota_registry_bytes {bytes}");
    family(
        out,
        "gator_ota_registry_save_seconds",
        "gauge",
        "Time the last save of fleet.json took, by step (serialise, write).",
    );
    for (step, us) in [("serialise", serialise), ("write", write)] {
        let _ = writeln!(
            out,
            "gator_ota_registry_save_seconds{{step=\"{step}\"}} {:.6}",
            us as f64 / 1e6
        );
    }
}

fn served(out: &mut String, m: &Metrics) {
    family(
        out,
        "gator_ota_images_served_total",
        "counter",
        "Image requests answered by the firmware server, by image and outcome.",
    );
    for ((image, outcome), n) in m.served() {
        let _ = writeln!(
            out,
            "gator_ota_images_served_total{{image=\"{}\",outcome=\"{}\"}} {n}",
            label(&image),
            outcome.label()
        );
    }
    family(
        out,
        "gator_ota_served_bytes_total",
        "counter",
        "Image bytes the firmware server handed to devices.",
    );
    let _ = writeln!(out, "gator_ota_served_bytes_total {}", m.served_bytes());
}

fn devices(out: &mut String, report: &StatusReport) {
    family(
        out,
        "gator_ota_devices",
        "gauge",
        "Data Gators in the registry, by the version they report.",
    );
    for (version, n) in &report.versions {
        let _ = writeln!(
            out,
            "gator_ota_devices{{version=\"{}\"}} {n}",
            label(version)
        );
    }
    family(
        out,
        "gator_ota_rollout_devices",
        "gauge",
        "Devices per rollout state, for the image each pointer names.",
    );
    for image in &report.images {
        let name = image.image.as_deref().unwrap_or("");
        for (state, n) in &image.states {
            let _ = writeln!(
                out,
                "gator_ota_rollout_devices{{pointer=\"{}\",image=\"{}\",state=\"{}\"}} {n}",
                label(&image.url),
                label(name),
                label(state)
            );
        }
    }
}

/// Each staged rollout's wave, whether it is stopped, and its counts.
fn staged(out: &mut String, report: &StatusReport) {
    let staged: Vec<_> = report
        .images
        .iter()
        .filter_map(|i| i.staged.as_ref().map(|s| (i, s)))
        .collect();
    if staged.is_empty() {
        return;
    }
    family(
        out,
        "gator_ota_rollout_wave",
        "gauge",
        "The staged rollout's current wave (0: the canary).",
    );
    for (i, s) in &staged {
        let (url, image) = (label(&i.url), label(i.image.as_deref().unwrap_or("")));
        let _ = writeln!(
            out,
            "gator_ota_rollout_wave{{pointer=\"{url}\",image=\"{image}\"}} {}",
            s.wave
        );
    }
    family(
        out,
        "gator_ota_rollout_stopped",
        "gauge",
        "1 while the staged rollout is paused or aborted.",
    );
    for (i, s) in &staged {
        let (url, image) = (label(&i.url), label(i.image.as_deref().unwrap_or("")));
        let _ = writeln!(
            out,
            "gator_ota_rollout_stopped{{pointer=\"{url}\",image=\"{image}\",status=\"{}\"}} {}",
            label(&s.status),
            u8::from(s.status != "running")
        );
    }
    family(
        out,
        "gator_ota_rollout_admitted_devices",
        "gauge",
        "Devices the staged rollout has admitted so far.",
    );
    for (i, s) in &staged {
        let (url, image) = (label(&i.url), label(i.image.as_deref().unwrap_or("")));
        let _ = writeln!(
            out,
            "gator_ota_rollout_admitted_devices{{pointer=\"{url}\",image=\"{image}\"}} {}",
            s.admitted
        );
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value, escaped as the format asks (`\`, `"` and newlines).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_declared_and_counted() {
        let m = Metrics::default();
        m.job_ended(
            "a",
            "fw",
            crate::status::State::Failed,
            Some(crate::status::Reason::NotFound),
        );
        m.image_served(
            "datagator_v1.0.1.bin",
            crate::metrics::ServedOutcome::Completed,
            10,
        );
        let text = render(&crate::fleet::report::tests::sample("e"), &m);
        for line in [
            "gator_ota_jobs_total{outcome=\"FAILED\",reason=\"NOT_FOUND\"} 1",
            "gator_ota_images_served_total{image=\"datagator_v1.0.1.bin\",outcome=\"completed\"} 1",
            "gator_ota_devices{version=\"v1.0.1\"} 1",
            "gator_ota_rollout_devices{pointer=\"/current_version.txt\",image=\"datagator_v1.0.1.bin\",state=\"downloading\"} 1",
            "gator_ota_mqtt_connected{carrier=\"local\"} 1",
            "gator_ota_served_bytes_total 10",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        for sample in text.lines().filter(|l| !l.starts_with('#')) {
            let name = sample.split(['{', ' ']).next().unwrap();
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} has no TYPE"
            );
        }
    }

    #[test]
    fn a_staged_rollout_has_its_wave_status_and_admitted_devices() {
        let mut report = crate::fleet::report::tests::sample("e");
        let text = render(&report, &Metrics::default());
        assert!(!text.contains("gator_ota_rollout_wave"), "rollouts off");
        report.images[0].staged = Some(crate::fleet::report::StagedView {
            status: "paused".into(),
            wave: 1,
            waves: 3,
            share: 10,
            admitted: 4,
            confirmed: 2,
            failed: 2,
            reason: Some("2 of 4 devices failed".into()),
            previous: None,
            wave_started: String::new(),
        });
        let text = render(&report, &Metrics::default());
        let at = "pointer=\"/current_version.txt\",image=\"datagator_v1.0.1.bin\"";
        for line in [
            format!("gator_ota_rollout_wave{{{at}}} 1"),
            format!("gator_ota_rollout_stopped{{{at},status=\"paused\"}} 1"),
            format!("gator_ota_rollout_admitted_devices{{{at}}} 4"),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        for name in ["gator_ota_rollout_wave", "gator_ota_rollout_stopped"] {
            assert!(text.contains(&format!("# TYPE {name} gauge")), "{name}");
        }
        let summary = report.to_text();
        assert!(
            summary.contains("staged rollout: wave 1 of 3 (10%), paused: 2 of 4 devices failed; 4 admitted, 2 confirmed, 2 failed"),
            "{summary}"
        );
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
