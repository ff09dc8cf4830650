//! `GET /`: the status page an operator opens on a phone in the field.
//!
//! Server-rendered HTML with a small inline stylesheet and no script: it
//! works on any browser, over the gateway's plain HTTP, offline. Every value
//! from a device or a message is escaped.

use std::fmt::Write;

use super::report::{DeviceView, ImageRollout, StatusReport, connected};

const STYLE: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;max-width:60em;padding:.6em;color:#222}\
h1{font-size:1.3em;margin:.2em 0}h2{font-size:1.1em;margin:1em 0 .3em}\
.ok{color:#176b2c}.bad{color:#a31515;font-weight:bold}\
.bar{display:flex;height:.8em;border-radius:.4em;overflow:hidden;background:#ddd;margin:.3em 0}\
.bar span{display:block}.confirmed{background:#2e8b57}.finished{background:#8fbc8f}\
.downloading{background:#4682b4}.failed{background:#c0392b}.pending{background:#ccc}\
.wrap{overflow-x:auto}table{border-collapse:collapse;width:100%;font-size:.92em}\
th,td{text-align:left;padding:.25em .4em;border-bottom:1px solid #ddd;white-space:nowrap}\
td.err{white-space:normal;max-width:16em;word-break:break-word}small{color:#666}";

pub fn render(r: &StatusReport) -> String {
    let mut h = String::with_capacity(4096 + r.devices.len() * 256);
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>gator-ota {id}</title><style>{STYLE}</style></head><body>\
         <h1>gator-ota · {id}</h1><p><small>as of {time}</small></p>",
        id = esc(&r.system_id),
        time = esc(&r.time),
    );
    health(&mut h, r);
    for image in &r.images {
        rollout(&mut h, image);
    }
    devices(&mut h, &r.devices);
    jobs(&mut h, r);
    h.push_str("</body></html>");
    h
}

fn health(h: &mut String, r: &StatusReport) {
    let Some(health) = &r.health else { return };
    if health.ok {
        h.push_str("<p class=\"ok\">Healthy</p>");
    } else {
        h.push_str("<p class=\"bad\">Not healthy</p><ul>");
        for p in &health.problems {
            let _ = write!(h, "<li>{}</li>", esc(p));
        }
        h.push_str("</ul>");
    }
    let carriers: Vec<String> = r
        .carriers
        .iter()
        .map(|c| format!("{} {}", esc(&c.name), connected(c.connected)))
        .collect();
    let _ = write!(h, "<p><small>MQTT: {}</small></p>", carriers.join(" · "));
}

fn rollout(h: &mut String, image: &ImageRollout) {
    let name = image.image.as_deref().unwrap_or("no image yet");
    let _ = write!(
        h,
        "<h2>Current image {}</h2><p>{} <small>at {}</small></p>",
        esc(image.version.as_deref().unwrap_or("")),
        esc(name),
        esc(&image.url)
    );
    let n = image.devices.max(1);
    h.push_str("<div class=\"bar\">");
    for state in ["confirmed", "finished", "downloading", "failed", "pending"] {
        let count = image.states.get(state).copied().unwrap_or(0);
        if count > 0 {
            let _ = write!(
                h,
                "<span class=\"{state}\" style=\"width:{}%\"></span>",
                count * 100 / n
            );
        }
    }
    h.push_str("</div><p>");
    let parts: Vec<String> = ["confirmed", "finished", "downloading", "failed", "pending"]
        .iter()
        .map(|s| format!("{s} {}", image.states.get(*s).copied().unwrap_or(0)))
        .collect();
    let _ = write!(
        h,
        "{} of {} devices: {}</p>",
        image.states.get("confirmed").copied().unwrap_or(0),
        image.devices,
        parts.join(" · ")
    );
    if let Some(s) = &image.staged {
        let _ = write!(h, "<p>Staged rollout: {}</p>", esc(&s.describe()));
    }
}

fn devices(h: &mut String, devices: &[DeviceView]) {
    let _ = write!(h, "<h2>Devices ({})</h2>", devices.len());
    if devices.is_empty() {
        h.push_str("<p>No Data Gator seen yet.</p>");
        return;
    }
    h.push_str("<div class=\"wrap\"><table><tr><th>MAC</th><th>Version</th><th>Rollout</th><th>OTA</th><th>Last seen</th><th>Errors</th><th>Last error</th></tr>");
    for d in devices {
        let state = d.rollout.as_deref().unwrap_or("");
        let class = if state == "failed" {
            " class=\"bad\""
        } else {
            ""
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td{class}>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
            esc(&d.mac),
            esc(d.version.as_deref().unwrap_or("?")),
            esc(state),
            esc(d.ota_state.as_deref().unwrap_or("")),
            esc(&d.last_seen),
            d.errors,
            esc(&d.problem()),
        );
    }
    h.push_str("</table></div>");
}

fn jobs(h: &mut String, r: &StatusReport) {
    h.push_str("<h2>Last jobs</h2>");
    if r.jobs.is_empty() {
        h.push_str("<p>No job since the start.</p>");
        return;
    }
    h.push_str("<div class=\"wrap\"><table><tr><th>Time</th><th>Image</th><th>Status</th><th>Message</th></tr>");
    for j in &r.jobs {
        let status = match &j.reason {
            Some(reason) => format!("{} {}", j.status, reason),
            None => j.status.clone(),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&j.time),
            esc(&j.file_name),
            esc(&status),
            esc(&j.msg_id)
        );
    }
    h.push_str("</table></div>");
}

/// HTML-escapes text for element content and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_text_is_escaped() {
        assert_eq!(esc("<script>\"&'"), "&lt;script&gt;&quot;&amp;&#39;");
        let page = render(&crate::fleet::report::tests::sample(
            "<script>alert(1)</script>",
        ));
        assert!(!page.contains("<script"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)"), "{page}");
        assert!(page.contains("1 of 3 devices"), "{page}");
    }
}
