//! Reading a SCARECRO `configs/` folder by SCARECRO's own rules.
//!
//! Every rule here is the one SCARECRO's `System` class applies in
//! `src/system/system.py`, because a gateway's folder was written against
//! that code and must mean the same thing to gator-ota:
//!
//! - one JSON object per file, `<kind>/<name>.json` (`get_import_content`);
//! - `inheritance` (`System.inheritance`): the listed configs are resolved
//!   left to right, each recursively first, merged with `deep_update`
//!   (nested objects merge, everything else is replaced), and the config's
//!   own keys go on top;
//! - keyword substitution (`System.substitution_content`): after
//!   inheritance, a value or key that *is* `$name`, `$msg_type` or
//!   `$system_id` becomes the config's name, its (resolved) `message_type`,
//!   or the system id; nested objects are substituted with the same values,
//!   lists and partial strings are left alone. Because it runs once on the
//!   finished config, `$name` in an inherited file means the inheriting
//!   config's name: keywords are not inherited, they are passed through;
//! - addresses (`System.import_addresses`): an address whose own file has a
//!   list `message_type` becomes one address per type, named
//!   `<address>_<type>`, each completed (inheritance, substitution) under
//!   that name.
//!
//! Where SCARECRO only logs a problem and carries on with an empty config (a
//! missing file, invalid JSON) or recurses forever (an inheritance cycle),
//! gator-ota stops with an error naming the file and key instead.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::ScarecroError as E;

pub(super) type Object = Map<String, Value>;

/// The substitution keywords, exactly as `System.return_sub_keywords` lists them.
const NAME: &str = "$name";
const MSG_TYPE: &str = "$msg_type";
const SYSTEM_ID: &str = "$system_id";

/// SCARECRO's fallback system id (`system_config.get("id", "default")`).
pub(super) const DEFAULT_SYSTEM_ID: &str = "default";

/// The sub-folders of a SCARECRO `configs/` folder that gator-ota reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    System,
    Addresses,
    Carriers,
    Messages,
    Tasks,
}

impl Kind {
    fn folder(self) -> &'static str {
        match self {
            Kind::System => "system",
            Kind::Addresses => "addresses",
            Kind::Carriers => "carriers",
            Kind::Messages => "messages",
            Kind::Tasks => "tasks",
        }
    }
}

/// A SCARECRO configuration folder and the system id its keywords resolve to.
pub(super) struct Folder {
    dir: PathBuf,
    system_id: Value,
}

/// One address after SCARECRO's per-message-type expansion.
pub(super) struct ResolvedAddress {
    /// The address name SCARECRO uses: the file name, or `<file>_<type>`.
    pub name: String,
    /// The file it came from, without `.json`.
    pub stem: String,
    pub content: Object,
}

impl Folder {
    /// Opens `dir`, which should hold `system/system.json`. A SCARECRO
    /// checkout (the folder holding `configs/`) is accepted too, since that
    /// is where operators usually are when they look for it.
    pub fn open(dir: &Path) -> Result<Self, E> {
        let has_system = |d: &Path| d.join("system").join("system.json").is_file();
        let dir = if has_system(dir) {
            dir.to_path_buf()
        } else if has_system(&dir.join("configs")) {
            dir.join("configs")
        } else {
            return Err(E::Folder {
                dir: dir.display().to_string(),
                problem: "there is no system/system.json in it".into(),
                fix: "point --scarecro-configs (or system.scarecro_configs) at the SCARECRO \
                      configs folder that holds system/, addresses/, carriers/, messages/ and tasks/"
                    .into(),
            });
        };
        Ok(Self {
            dir,
            system_id: Value::String(DEFAULT_SYSTEM_ID.into()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<kind>/<name>.json`, the way the report and errors name a file.
    pub fn label(kind: Kind, name: &str) -> String {
        format!("{}/{name}.json", kind.folder())
    }

    /// The full path of a config, for error messages.
    pub fn path(&self, kind: Kind, name: &str) -> String {
        self.dir
            .join(kind.folder())
            .join(format!("{name}.json"))
            .display()
            .to_string()
    }

    pub fn exists(&self, kind: Kind, name: &str) -> bool {
        self.dir
            .join(kind.folder())
            .join(format!("{name}.json"))
            .is_file()
    }

    /// The file's object as written, or `None` when there is no such file.
    pub fn raw(&self, kind: Kind, name: &str) -> Result<Option<Object>, E> {
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Ok(None);
        }
        let path = self.dir.join(kind.folder()).join(format!("{name}.json"));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(E::File {
                    file: path.display().to_string(),
                    problem: format!("cannot read it: {e}"),
                    fix: "make it readable by the gator-ota user".into(),
                });
            }
        };
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(o)) => Ok(Some(o)),
            Ok(other) => Err(E::File {
                file: path.display().to_string(),
                problem: format!("holds {}, not a JSON object", kind_of(&other)),
                fix: "write the config as one JSON object, {\"key\": value, ...}".into(),
            }),
            Err(e) => Err(E::File {
                file: path.display().to_string(),
                problem: format!("is not valid JSON: {e}"),
                fix: "correct the JSON (SCARECRO reads each config with json.load)".into(),
            }),
        }
    }

    /// The file's object, which `referrer`'s `key` says must exist.
    pub fn required(
        &self,
        kind: Kind,
        name: &str,
        referrer: (Kind, &str),
        key: &str,
    ) -> Result<Object, E> {
        self.raw(kind, name)?.ok_or_else(|| E::Key {
            file: self.path(referrer.0, referrer.1),
            key: key.into(),
            problem: format!(
                "names {name:?}, but {} does not exist",
                self.path(kind, name)
            ),
            fix: format!("add {} or correct the name", Folder::label(kind, name)),
        })
    }

    /// `import_config`: the file `name`, inherited and substituted.
    pub fn import(
        &self,
        kind: Kind,
        name: &str,
        referrer: (Kind, &str),
        key: &str,
    ) -> Result<Object, E> {
        let raw = self.required(kind, name, referrer, key)?;
        self.complete(kind, name, name, raw)
    }

    /// `complete_content`: inheritance, then substitution. `stem` is the file
    /// the content came from, `name` the config name keywords resolve to.
    fn complete(&self, kind: Kind, stem: &str, name: &str, content: Object) -> Result<Object, E> {
        let mut chain = vec![stem.to_string()];
        let content = self.inherit(kind, stem, content, &mut chain)?;
        let msg_type = content.get("message_type").cloned().unwrap_or(Value::Null);
        let keywords = Keywords {
            name: Value::String(name.to_string()),
            msg_type,
            system_id: self.system_id.clone(),
        };
        keywords.apply(content, &|key: &str, problem: String| E::Key {
            file: self.path(kind, stem),
            key: key.to_string(),
            problem,
            fix: "use the keyword only where it has a value, or write the key out".into(),
        })
    }

    /// `System.inheritance`, with the chain of files being resolved kept so
    /// a cycle is an error rather than SCARECRO's endless recursion.
    fn inherit(
        &self,
        kind: Kind,
        stem: &str,
        content: Object,
        chain: &mut Vec<String>,
    ) -> Result<Object, E> {
        let parents = inheritance_list(&content).map_err(|problem| E::Key {
            file: self.path(kind, stem),
            key: "inheritance".into(),
            problem,
            fix: "list the configs to inherit from, e.g. \"inheritance\": [\"base\"]".into(),
        })?;
        if parents.is_empty() {
            return Ok(content);
        }
        let mut inherited = Object::new();
        for parent in parents {
            if chain.iter().any(|c| c == &parent) {
                let mut cycle = chain.clone();
                cycle.push(parent.clone());
                return Err(E::Key {
                    file: self.path(kind, stem),
                    key: "inheritance".into(),
                    problem: format!(
                        "inheritance cycle: {}",
                        cycle
                            .iter()
                            .map(|c| Folder::label(kind, c))
                            .collect::<Vec<_>>()
                            .join(" -> ")
                    ),
                    fix: format!("remove {parent:?} from one of these inheritance lists"),
                });
            }
            let raw = self.required(kind, &parent, (kind, stem), "inheritance")?;
            chain.push(parent.clone());
            let resolved = self.inherit(kind, &parent, raw, chain)?;
            chain.pop();
            deep_update(&mut inherited, resolved);
        }
        deep_update(&mut inherited, content);
        Ok(inherited)
    }

    /// The system config, `system/system.json`. As in SCARECRO, its own
    /// `$system_id` resolves to "default": the id is not known until the
    /// file has been read.
    pub fn system(&mut self) -> Result<Object, E> {
        self.system_id = Value::String(DEFAULT_SYSTEM_ID.into());
        let raw = self.raw(Kind::System, "system")?.ok_or_else(|| E::Folder {
            dir: self.dir.display().to_string(),
            problem: "system/system.json disappeared while reading".into(),
            fix: "keep the folder in place while gator-ota starts".into(),
        })?;
        let system = self.complete(Kind::System, "system", "system", raw)?;
        self.system_id = system
            .get("id")
            .cloned()
            .unwrap_or_else(|| Value::String(DEFAULT_SYSTEM_ID.into()));
        Ok(system)
    }

    /// `System.import_addresses`: the listed addresses in order, those with a
    /// list `message_type` in their own file expanded to one per type. A
    /// later address of the same name replaces an earlier one in place, as
    /// in SCARECRO's `self.addresses` dict.
    pub fn addresses(&self, names: &[String]) -> Result<Vec<ResolvedAddress>, E> {
        let mut out: Vec<ResolvedAddress> = Vec::new();
        let mut put =
            |address: ResolvedAddress| match out.iter_mut().find(|a| a.name == address.name) {
                Some(slot) => *slot = address,
                None => out.push(address),
            };
        for stem in names {
            let raw =
                self.required(Kind::Addresses, stem, (Kind::System, "system"), "addresses")?;
            match raw.get("message_type") {
                Some(Value::Array(types)) => {
                    for t in types.clone() {
                        let name = format!("{stem}_{}", py_str(&t));
                        let mut content = raw.clone();
                        content.insert("message_type".into(), t);
                        let content = self.complete(Kind::Addresses, stem, &name, content)?;
                        put(ResolvedAddress {
                            name,
                            stem: stem.clone(),
                            content,
                        });
                    }
                }
                _ => {
                    let content = self.complete(Kind::Addresses, stem, stem, raw)?;
                    put(ResolvedAddress {
                        name: stem.clone(),
                        stem: stem.clone(),
                        content,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// The `inheritance` list; absent, `null` and `[]` all mean none.
fn inheritance_list(content: &Object) -> Result<Vec<String>, String> {
    match content.get("inheritance") {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!("lists {}, not a config name", kind_of(other))),
            })
            .collect(),
        Some(Value::String(s)) => Err(format!(
            "is the string {s:?}; SCARECRO expects a list (it would read each letter as a name)"
        )),
        Some(other) => Err(format!("is {}, not a list of names", kind_of(other))),
    }
}

/// SCARECRO's `deep_update`: objects merge key by key, recursively; any
/// other value (lists included) replaces what was there.
pub(super) fn deep_update(base: &mut Object, new: Object) {
    for (key, value) in new {
        match value {
            Value::Object(inner) => {
                let mut merged = match base.remove(&key) {
                    Some(Value::Object(existing)) => existing,
                    _ => Object::new(),
                };
                deep_update(&mut merged, inner);
                base.insert(key, Value::Object(merged));
            }
            other => {
                base.insert(key, other);
            }
        }
    }
}

/// The values `$name`, `$msg_type` and `$system_id` stand for in one config.
struct Keywords {
    name: Value,
    msg_type: Value,
    system_id: Value,
}

impl Keywords {
    fn value(&self, keyword: &str) -> Option<&Value> {
        match keyword {
            NAME => Some(&self.name),
            MSG_TYPE => Some(&self.msg_type),
            SYSTEM_ID => Some(&self.system_id),
            _ => None,
        }
    }

    /// `substitution_content`: values first (recursing into objects), then
    /// keys. A renamed key wins over a written key of the same name.
    fn apply(&self, content: Object, err: &dyn Fn(&str, String) -> E) -> Result<Object, E> {
        let mut kept = Object::new();
        let mut renamed = Vec::new();
        for (key, value) in content {
            let value = match value {
                Value::String(s) => match self.value(&s) {
                    Some(v) => v.clone(),
                    None => Value::String(s),
                },
                Value::Object(inner) => Value::Object(self.apply(inner, err)?),
                other => other,
            };
            match self.value(&key) {
                Some(new_key) => {
                    let new_key = match new_key {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        other => {
                            return Err(err(
                                &key,
                                format!("the key {key} would become {}", kind_of(other)),
                            ));
                        }
                    };
                    renamed.push((new_key, value));
                }
                None => {
                    kept.insert(key, value);
                }
            }
        }
        kept.extend(renamed);
        Ok(kept)
    }
}

/// Python's `str()` of a JSON value, for names SCARECRO builds with
/// f-strings (`f"{address}_{type}"`, `f"{client_id}_{system_id}"`).
pub(super) fn py_str(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Python truthiness, for SCARECRO's `if username and password`.
pub(super) fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Bool(true)) => true,
    }
}

pub(super) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A folder of configs written from `(relative path, JSON)` pairs.
    fn folder(files: &[(&str, Value)]) -> (tempfile::TempDir, Folder) {
        let dir = tempfile::tempdir().unwrap();
        let mut all: Vec<(&str, Value)> = files.to_vec();
        if !files.iter().any(|(p, _)| *p == "system/system.json") {
            all.push(("system/system.json", json!({"id": "gw-1"})));
        }
        for (path, value) in all {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
        }
        let mut f = Folder::open(dir.path()).unwrap();
        f.system().unwrap();
        (dir, f)
    }

    fn carrier(f: &Folder, name: &str) -> Result<Object, E> {
        f.import(Kind::Carriers, name, (Kind::System, "system"), "test")
    }

    fn key_and_file(e: E) -> (String, String) {
        match e {
            E::Key { key, file, .. } => (key, file),
            other => panic!("expected a key error, got {other}"),
        }
    }

    #[test]
    fn inheritance_is_left_to_right_with_the_config_on_top() {
        let (_d, f) = folder(&[
            ("carriers/a.json", json!({"x": "a", "y": "a", "only_a": 1})),
            ("carriers/b.json", json!({"x": "b", "only_b": 2})),
            (
                "carriers/child.json",
                json!({"inheritance": ["a", "b"], "y": "child"}),
            ),
        ]);
        let c = carrier(&f, "child").unwrap();
        assert_eq!(c["x"], "b", "the later parent overrides the earlier");
        assert_eq!(c["y"], "child", "the config's own keys win");
        assert_eq!(
            (c["only_a"].clone(), c["only_b"].clone()),
            (json!(1), json!(2))
        );
        assert_eq!(
            c["inheritance"],
            json!(["a", "b"]),
            "SCARECRO keeps the list"
        );
    }

    #[test]
    fn inheritance_is_recursive_and_merges_nested_objects() {
        let (_d, f) = folder(&[
            (
                "addresses/grand.json",
                json!({"additional_info": {"topic": "g", "keep": true}, "list": [1, 2]}),
            ),
            (
                "addresses/parent.json",
                json!({"inheritance": ["grand"], "additional_info": {"topic": "p"}}),
            ),
            (
                "addresses/child.json",
                json!({"inheritance": ["parent"], "additional_info": {"extra": 1}, "list": [3]}),
            ),
        ]);
        let c = f
            .import(
                Kind::Addresses,
                "child",
                (Kind::System, "system"),
                "addresses",
            )
            .unwrap();
        assert_eq!(
            c["additional_info"],
            json!({"topic": "p", "keep": true, "extra": 1})
        );
        assert_eq!(c["list"], json!([3]), "lists are replaced, not merged");
    }

    #[test]
    fn a_diamond_is_not_a_cycle() {
        let (_d, f) = folder(&[
            ("carriers/base.json", json!({"v": "base"})),
            ("carriers/l.json", json!({"inheritance": ["base"], "l": 1})),
            ("carriers/r.json", json!({"inheritance": ["base"], "r": 1})),
            ("carriers/d.json", json!({"inheritance": ["l", "r"]})),
        ]);
        let c = carrier(&f, "d").unwrap();
        assert_eq!(
            (c["v"].clone(), c["l"].clone(), c["r"].clone()),
            (json!("base"), json!(1), json!(1))
        );
    }

    #[test]
    fn cycles_name_the_file_and_the_chain() {
        let (_d, f) = folder(&[
            ("carriers/a.json", json!({"inheritance": ["b"]})),
            ("carriers/b.json", json!({"inheritance": ["c"]})),
            ("carriers/c.json", json!({"inheritance": ["a"]})),
            ("carriers/me.json", json!({"inheritance": ["me"]})),
        ]);
        let err = carrier(&f, "a").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(
                "carriers/a.json -> carriers/b.json -> carriers/c.json -> carriers/a.json"
            ),
            "{text}"
        );
        let (key, file) = key_and_file(err);
        assert_eq!(key, "inheritance");
        assert!(file.ends_with("carriers/c.json"), "{file}");
        let (key, file) = key_and_file(carrier(&f, "me").unwrap_err());
        assert_eq!(key, "inheritance");
        assert!(file.ends_with("carriers/me.json"), "{file}");
    }

    #[test]
    fn a_missing_parent_names_the_inheriting_file() {
        let (_d, f) = folder(&[
            ("messages/m.json", json!({"inheritance": ["base", "gone"]})),
            ("messages/base.json", json!({})),
        ]);
        let err = f
            .import(Kind::Messages, "m", (Kind::System, "system"), "x")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("messages/gone.json does not exist"), "{text}");
        let (key, file) = key_and_file(err);
        assert_eq!(key, "inheritance");
        assert!(file.ends_with("messages/m.json"), "{file}");
    }

    #[test]
    fn bad_inheritance_values_and_invalid_json_are_errors() {
        let (d, f) = folder(&[("carriers/s.json", json!({"inheritance": "base"}))]);
        let (key, _) = key_and_file(carrier(&f, "s").unwrap_err());
        assert_eq!(key, "inheritance");
        std::fs::write(
            d.path().join("carriers/broken.json"),
            "{\"source\": \"mqtt\",}",
        )
        .unwrap();
        match carrier(&f, "broken").unwrap_err() {
            E::File { file, problem, .. } => {
                assert!(file.ends_with("carriers/broken.json"), "{file}");
                assert!(problem.contains("not valid JSON"), "{problem}");
            }
            other => panic!("{other}"),
        }
        std::fs::write(d.path().join("carriers/list.json"), "[1]").unwrap();
        assert!(
            carrier(&f, "list")
                .unwrap_err()
                .to_string()
                .contains("not a JSON object")
        );
    }

    #[test]
    fn keywords_replace_whole_values_and_keys_after_inheritance() {
        let (_d, f) = folder(&[
            (
                "addresses/base.json",
                json!({"client": "$name", "additional_info": {"topic": "$msg_type", "$system_id": "$name"}}),
            ),
            (
                "addresses/addr.json",
                json!({
                    "inheritance": ["base"],
                    "message_type": "firmware_image",
                    "id": "$system_id",
                    "$name": "$msg_type",
                    "partial": "scarecro/$system_id",
                    "list": ["$name"],
                }),
            ),
        ]);
        let a = f
            .import(
                Kind::Addresses,
                "addr",
                (Kind::System, "system"),
                "addresses",
            )
            .unwrap();
        assert_eq!(
            a["client"], "addr",
            "$name in a parent is the inheriting config's name"
        );
        assert_eq!(a["additional_info"]["topic"], "firmware_image");
        assert_eq!(
            a["additional_info"]["gw-1"], "addr",
            "nested keys are substituted too"
        );
        assert_eq!(a["id"], "gw-1");
        assert_eq!(
            a["addr"], "firmware_image",
            "a keyword key becomes its value"
        );
        assert!(!a.contains_key("$name"));
        assert_eq!(
            a["partial"], "scarecro/$system_id",
            "only whole strings are keywords"
        );
        assert_eq!(a["list"], json!(["$name"]), "lists are not substituted");
    }

    #[test]
    fn msg_type_without_a_message_type_is_null_and_cannot_be_a_key() {
        let (_d, f) = folder(&[
            ("carriers/v.json", json!({"t": "$msg_type"})),
            ("carriers/k.json", json!({"$msg_type": 1})),
        ]);
        assert_eq!(carrier(&f, "v").unwrap()["t"], Value::Null);
        let (key, file) = key_and_file(carrier(&f, "k").unwrap_err());
        assert_eq!(key, "$msg_type");
        assert!(file.ends_with("carriers/k.json"));
    }

    #[test]
    fn the_system_config_sees_the_default_system_id() {
        let (_d, mut f) = folder(&[(
            "system/system.json",
            json!({"id": "gw-9", "echo": "$system_id", "me": "$name"}),
        )]);
        let s = f.system().unwrap();
        assert_eq!(
            s["echo"], "default",
            "SCARECRO reads the id only after this file"
        );
        assert_eq!(s["me"], "system");
        let missing = carrier(&f, "x").unwrap_err().to_string();
        assert!(
            missing.contains("carriers/x.json does not exist"),
            "{missing}"
        );
    }

    #[test]
    fn list_message_types_expand_to_one_address_each() {
        let (_d, f) = folder(&[
            (
                "addresses/base.json",
                json!({"carrier": "mqtt", "additional_info": {"topic": "$msg_type"}}),
            ),
            (
                "addresses/cloud.json",
                json!({"inheritance": ["base"], "message_type": ["a", "b"], "who": "$name"}),
            ),
            (
                "addresses/single.json",
                json!({"message_type": "c", "who": "$name"}),
            ),
        ]);
        let names = vec!["cloud".to_string(), "single".to_string()];
        let all = f.addresses(&names).unwrap();
        let got: Vec<(&str, &str, &Value, &Value, &Value)> = all
            .iter()
            .map(|a| {
                (
                    a.name.as_str(),
                    a.stem.as_str(),
                    &a.content["message_type"],
                    &a.content["who"],
                    a.content
                        .get("additional_info")
                        .map_or(&Value::Null, |i| &i["topic"]),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "cloud_a",
                    "cloud",
                    &json!("a"),
                    &json!("cloud_a"),
                    &json!("a")
                ),
                (
                    "cloud_b",
                    "cloud",
                    &json!("b"),
                    &json!("cloud_b"),
                    &json!("b")
                ),
                (
                    "single",
                    "single",
                    &json!("c"),
                    &json!("single"),
                    &Value::Null
                ),
            ]
        );
    }

    #[test]
    fn a_missing_listed_address_names_the_system_file() {
        let (_d, f) = folder(&[]);
        let (key, file) = key_and_file(f.addresses(&["nope".into()]).err().unwrap());
        assert_eq!(key, "addresses");
        assert!(file.ends_with("system/system.json"), "{file}");
    }

    #[test]
    fn a_checkout_folder_is_accepted_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("configs/system")).unwrap();
        std::fs::write(dir.path().join("configs/system/system.json"), "{}").unwrap();
        assert!(Folder::open(dir.path()).unwrap().dir().ends_with("configs"));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(Folder::open(empty.path()), Err(E::Folder { .. })));
    }
}
