//! Message configs: the id and time fields of every type gator-ota
//! receives or sends.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{CONFIRM_RECEIPT, E, Folder, Kind, Mapper, Object, py_str, to_tree};
use crate::MessageSpec;

impl Mapper<'_> {
    /// SCARECRO's envelope falls back to `id` and `time` when a message
    /// config has no id_field or time_field, or does not exist.
    pub(super) fn messages(
        &mut self,
        consumed: &BTreeSet<String>,
        tree: &mut Object,
    ) -> Result<(), E> {
        let mut messages = Object::new();
        let mut types = consumed.clone();
        types.insert(CONFIRM_RECEIPT.into());
        for t in types {
            let file = Folder::label(Kind::Messages, &t);
            let content = if self.folder.exists(Kind::Messages, &t) {
                self.folder
                    .import(Kind::Messages, &t, (Kind::Messages, &t), "message_type")?
            } else {
                self.report.notes.push(format!(
                    "{file} does not exist; SCARECRO's defaults apply: id_field \"id\", time_field \"time\""
                ));
                Object::new()
            };
            let field = |key: &str, default: &str| {
                content
                    .get(key)
                    .filter(|v| !v.is_null())
                    .map(py_str)
                    .unwrap_or_else(|| default.to_string())
            };
            let spec = MessageSpec {
                id_field: field("id_field", "id"),
                time_field: field("time_field", "time"),
            };
            if !content.is_empty() {
                let what = format!(
                    "id_field {:?}, time_field {:?}",
                    spec.id_field, spec.time_field
                );
                self.used(file, format!("messages.{t}"), what, &content);
            }
            messages.insert(t, to_tree(&spec));
        }
        tree.insert("messages".into(), Value::Object(messages));
        Ok(())
    }
}
