//! Tasks: `System.init_task`, and which of them gator-ota runs.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{E, Folder, Kind, Mapper, Object, kind_of, py_str, to_tree};
use crate::{HANDLE_NEW_FIRMWARE_MESSAGE, Task};

/// Task keys gator-ota maps; any other key of a used task is reported.
const TASK_KEYS: &[&str] = &[
    "inheritance",
    "source_type",
    "config_name",
    "function",
    "arguments",
    "duration",
    "message_type",
];

/// A task gator-ota runs.
pub(super) struct UsedTask {
    pub carrier: String,
    pub message_type: String,
}

impl Mapper<'_> {
    /// The tasks gator-ota runs; the others are reported as skipped.
    pub(super) fn tasks(
        &mut self,
        names: &[String],
        tree: &mut Object,
    ) -> Result<Vec<UsedTask>, E> {
        let mut used = Vec::new();
        let mut tasks = Object::new();
        for name in names {
            let t = self
                .folder
                .import(Kind::Tasks, name, (Kind::System, "system"), "tasks")?;
            let file = Folder::label(Kind::Tasks, name);
            let Some(task) = self.task(name, &t)? else {
                continue;
            };
            self.ignored_keys(&file, &t, TASK_KEYS);
            let (function, carrier) = (&task.function, &task.config_name);
            let what = format!("{function} on {carrier} for every {}", task.message_type);
            self.used(file, format!("tasks.{name}"), what, &t);
            used.push(UsedTask {
                carrier: task.config_name.clone(),
                message_type: task.message_type.clone(),
            });
            tasks.insert(name.clone(), to_tree(&task));
        }
        if used.is_empty() {
            return Err(self.no_task_error());
        }
        tree.insert("tasks".into(), Value::Object(tasks));
        Ok(used)
    }

    /// The task `name` as gator-ota runs it, or `None` (reported as
    /// skipped) when it is not `handle_new_firmware_message` on an s3
    /// carrier, `on_message`.
    fn task(&mut self, name: &str, t: &Object) -> Result<Option<Task>, E> {
        let file = Folder::label(Kind::Tasks, name);
        // `System.init_task`: a `source` key means a Python task module.
        if let Some(source) = t.get("source") {
            let reason = format!(
                "runs SCARECRO's Python task src/tasks/{}.py",
                py_str(source)
            );
            self.skip(file, name, reason);
            return Ok(None);
        }
        let source_type = t.get("source_type").map(py_str).unwrap_or_default();
        if source_type != "carrier" {
            let reason = format!("source_type {source_type:?}: gator-ota runs only carrier tasks");
            self.skip(file, name, reason);
            return Ok(None);
        }
        let carrier = self.config_name(name, t)?;
        let function = t.get("function").map(py_str).unwrap_or_default();
        let source = self
            .carrier(&carrier, (Kind::Tasks, name), "config_name")?
            .source
            .clone();
        if let Some(reason) = skip_reason(t, &carrier, &source, &function) {
            self.skip(file, name, reason);
            return Ok(None);
        }
        let arguments = match t.get("arguments") {
            Some(Value::Object(o)) => o.clone().into_iter().collect(),
            _ => BTreeMap::new(),
        };
        Ok(Some(Task {
            source_type: "carrier".into(),
            config_name: carrier,
            function,
            arguments,
            duration: "on_message".into(),
            message_type: py_str(&t["message_type"]),
        }))
    }

    /// The carrier a carrier task runs on; without one the folder is wrong.
    fn config_name(&self, name: &str, t: &Object) -> Result<String, E> {
        match t.get("config_name") {
            Some(Value::String(s)) => Ok(s.clone()),
            other => Err(E::Key {
                file: self.folder.path(Kind::Tasks, name),
                key: "config_name".into(),
                problem: match other {
                    None => "is missing, so the task names no carrier".into(),
                    Some(v) => format!("is {}, not a carrier name", kind_of(v)),
                },
                fix: "name the carrier the task runs on, e.g. \"s3_firmware_ota\"".into(),
            }),
        }
    }

    /// No listed task is one gator-ota runs: it would have nothing to do.
    fn no_task_error(&self) -> E {
        let skipped: Vec<String> = self
            .report
            .skipped
            .iter()
            .filter(|s| s.file.starts_with("tasks/"))
            .map(|s| format!("{}: {}", s.file, s.reason))
            .collect();
        let why = if skipped.is_empty() {
            String::new()
        } else {
            format!(" ({})", skipped.join("; "))
        };
        E::Key {
            file: self.folder.path(Kind::System, "system"),
            key: "tasks".into(),
            problem: format!(
                "no listed task runs {HANDLE_NEW_FIRMWARE_MESSAGE} on an s3 carrier, so gator-ota has nothing to do{why}"
            ),
            fix: "list SCARECRO's download_new_firmware_image task: {\"source_type\": \"carrier\", \
                  \"config_name\": \"s3_firmware_ota\", \"function\": \"handle_new_firmware_message\", \
                  \"arguments\": {}, \"duration\": \"on_message\", \"message_type\": \"firmware_image\"}"
                .into(),
        }
    }
}

/// Why a carrier task on `carrier` (of `source`) is not one gator-ota runs.
fn skip_reason(t: &Object, carrier: &str, source: &str, function: &str) -> Option<String> {
    let duration = t.get("duration").cloned().unwrap_or(Value::Null);
    if source != "s3" {
        Some(format!(
            "runs {function} on carrier {carrier} (source {source:?})"
        ))
    } else if function != HANDLE_NEW_FIRMWARE_MESSAGE {
        Some(format!(
            "runs {function} on s3 carrier {carrier}; gator-ota implements only {HANDLE_NEW_FIRMWARE_MESSAGE}"
        ))
    } else if duration != "on_message" {
        Some(format!(
            "duration {duration}: gator-ota runs {HANDLE_NEW_FIRMWARE_MESSAGE} only \"on_message\""
        ))
    } else if !matches!(t.get("message_type"), Some(Value::String(_))) {
        Some("has no message_type to run on".to_string())
    } else {
        None
    }
}
