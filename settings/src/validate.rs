//! One pass over loaded settings that names each bad key and its fix.

use std::path::Path;
use std::time::Duration;

use crate::{
    Address, Bucket, Carrier, Direction, HANDLE_NEW_FIRMWARE_MESSAGE, MqttCarrier, S3Carrier,
    Settings, SettingsError as E, Task,
};

/// The URL schemes a broker is reached by (`mqtt://` and `mqtts://` go to
/// paho-mqtt as `tcp://` and `ssl://`, see actors/src/mqtt.rs).
const MQTT_SCHEMES: &[&str] = &["tcp", "mqtt", "ssl", "mqtts"];

impl Settings {
    pub fn validate(&self) -> Result<(), E> {
        self.validate_system()?;
        self.validate_pipeline()?;
        self.validate_jobs()?;
        self.validate_firmware()?;
        self.http.validate()?;
        self.fleet.validate(&self.http)?;
        self.rollout.validate(self.fleet.enabled)?;
        self.validate_messages()?;
        for (name, c) in &self.carriers {
            self.validate_carrier(name, c)?;
        }
        for (name, a) in &self.addresses {
            self.validate_address(name, a)?;
        }
        for (name, t) in &self.tasks {
            self.validate_task(name, t)?;
        }
        self.validate_confirm_receipt()
    }

    /// The gateway's id and data folder, and the folders jobs may write in
    /// (by default the data folder).
    fn validate_system(&self) -> Result<(), E> {
        if self.system.id.trim().is_empty() || self.system.id.contains(['+', '#', '/']) {
            return Err(E::invalid(
                "system.id",
                format!("{:?} is not a usable gateway id", self.system.id),
                "set a non-empty id without '/', '+' or '#', e.g. GATOR_OTA__SYSTEM__ID=gateway-17",
            ));
        }
        if self.system.data_dir.as_os_str().is_empty() {
            return Err(E::invalid(
                "system.data_dir",
                "is empty",
                "name a writable folder",
            ));
        }
        for (i, root) in self.firmware.allowed_roots.iter().enumerate() {
            if root.as_os_str().is_empty() {
                return Err(E::invalid(
                    format!("firmware.allowed_roots[{i}]"),
                    "is empty",
                    "name a folder, or leave the list empty to use system.data_dir",
                ));
            }
        }
        Ok(())
    }

    fn validate_pipeline(&self) -> Result<(), E> {
        for (key, v) in [
            ("pipeline.queue", self.pipeline.queue),
            ("pipeline.outbox_window", self.pipeline.outbox_window),
            ("pipeline.inbox_warning", self.pipeline.inbox_warning),
            ("pipeline.device_queue", self.pipeline.device_queue),
            (
                "pipeline.max_payload_bytes",
                self.pipeline.max_payload_bytes,
            ),
            ("pipeline.write_chunks", self.pipeline.write_chunks),
        ] {
            if v == 0 {
                return Err(E::invalid(key, "is 0", "use a positive number"));
            }
        }
        Ok(())
    }

    fn validate_jobs(&self) -> Result<(), E> {
        for (key, v) in [
            ("jobs.concurrency", self.jobs.concurrency),
            ("jobs.attempts", self.jobs.attempts as usize),
            ("jobs.keep_images", self.jobs.keep_images),
            ("jobs.progress_step", self.jobs.progress_step as usize),
        ] {
            if v == 0 {
                return Err(E::invalid(key, "is 0", "use a positive number"));
            }
        }
        if self.jobs.progress_step > 100 {
            return Err(E::invalid(
                "jobs.progress_step",
                "is above 100",
                "use a percentage such as 10",
            ));
        }
        if self.jobs.backoff_min.is_zero() || self.jobs.backoff_max < self.jobs.backoff_min {
            return Err(E::invalid(
                "jobs.backoff_min",
                "backoff_min must be positive and not above backoff_max",
                "e.g. backoff_min = \"1s\", backoff_max = \"60s\"",
            ));
        }
        if self.jobs.idle_timeout.is_zero() {
            return Err(E::invalid(
                "jobs.idle_timeout",
                "is 0",
                "use a duration such as \"30s\"",
            ));
        }
        Ok(())
    }

    /// Signature keys, the default image and pointer paths, the size limit.
    fn validate_firmware(&self) -> Result<(), E> {
        if self.firmware.require_signature
            && self.firmware.public_keys.is_empty()
            && self.firmware.public_key_files.is_empty()
        {
            return Err(E::invalid(
                "firmware.require_signature",
                "is true but no public key is configured",
                "add firmware.public_keys (base64, from `gator-ota keygen`) or firmware.public_key_files (PEM)",
            ));
        }
        for (i, key) in self.firmware.public_keys.iter().enumerate() {
            let ok = key.trim().len() == 44
                && key.trim().ends_with('=')
                && key
                    .trim()
                    .trim_end_matches('=')
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
            if !ok {
                return Err(E::invalid(
                    format!("firmware.public_keys[{i}]"),
                    "is not a base64 Ed25519 public key (44 characters)",
                    "use the `public key` line printed by `gator-ota keygen`",
                ));
            }
        }
        for (i, file) in self.firmware.public_key_files.iter().enumerate() {
            if !file.is_file() {
                return Err(E::invalid(
                    format!("firmware.public_key_files[{i}]"),
                    format!("{} is not a readable file", file.display()),
                    "point it at a PEM public key (openssl pkey -pubout)",
                ));
            }
        }
        self.validate_default_paths()?;
        if self.firmware.max_image_bytes == 0 {
            return Err(E::invalid(
                "firmware.max_image_bytes",
                "is 0",
                "use a positive size in bytes",
            ));
        }
        Ok(())
    }

    fn validate_messages(&self) -> Result<(), E> {
        for (name, m) in &self.messages {
            if m.id_field.is_empty() || m.time_field.is_empty() {
                return Err(E::invalid(
                    format!("messages.{name}"),
                    "id_field and time_field must not be empty",
                    "name the fields of the message content that hold its id and time",
                ));
            }
        }
        Ok(())
    }

    /// A task must run `handle_new_firmware_message` on an s3 carrier for a
    /// configured message.
    fn validate_task(&self, name: &str, t: &Task) -> Result<(), E> {
        let key = format!("tasks.{name}");
        if t.source_type != "carrier" {
            return Err(E::invalid(
                format!("{key}.source_type"),
                format!("{:?} tasks are not run by gator-ota", t.source_type),
                "use \"carrier\"",
            ));
        }
        match self.carriers.get(&t.config_name) {
            Some(Carrier::S3(_)) => {}
            Some(Carrier::Mqtt(_)) => {
                return Err(E::invalid(
                    format!("{key}.config_name"),
                    format!("carrier {:?} is an mqtt carrier", t.config_name),
                    "name an s3 carrier, e.g. \"s3_firmware_ota\"",
                ));
            }
            None => {
                return Err(E::invalid(
                    format!("{key}.config_name"),
                    format!("no carrier named {:?} is configured", t.config_name),
                    format!(
                        "add [carriers.{}] or name a configured carrier",
                        t.config_name
                    ),
                ));
            }
        }
        if t.function != HANDLE_NEW_FIRMWARE_MESSAGE {
            return Err(E::invalid(
                format!("{key}.function"),
                format!("unknown function {:?}", t.function),
                format!("use \"{HANDLE_NEW_FIRMWARE_MESSAGE}\""),
            ));
        }
        if t.duration != "on_message" {
            return Err(E::invalid(
                format!("{key}.duration"),
                format!("{:?} is not supported", t.duration),
                "use \"on_message\"",
            ));
        }
        if !self.messages.contains_key(&t.message_type) {
            return Err(E::invalid(
                format!("{key}.message_type"),
                format!("no message {:?} is configured", t.message_type),
                format!(
                    "add [messages.{}] with id_field and time_field",
                    t.message_type
                ),
            ));
        }

        Ok(())
    }

    /// Without it no job could ever be confirmed.
    fn validate_confirm_receipt(&self) -> Result<(), E> {
        if !self.messages.contains_key("confirm_receipt") {
            return Err(E::invalid(
                "messages.confirm_receipt",
                "is missing",
                "add [messages.confirm_receipt] with id_field and time_field",
            ));
        }
        if self.send_addresses("confirm_receipt").next().is_none() {
            return Err(E::invalid(
                "addresses",
                "no send address carries confirm_receipt",
                "add an address with send_or_receive = \"send\" and message_type = [\"confirm_receipt\"]",
            ));
        }
        Ok(())
    }

    /// `images_dir` and `pointer_file` go into the path of every message
    /// without `disk_path` or `config_path`; a part the confinement refuses
    /// (empty, `.`, `..`) would fail each of those jobs.
    fn validate_default_paths(&self) -> Result<(), E> {
        let f = &self.firmware;
        for (key, path, example) in [
            ("firmware.images_dir", &f.images_dir, "firmware_images"),
            (
                "firmware.pointer_file",
                &f.pointer_file,
                "latest_firmware.json",
            ),
        ] {
            let text = path.to_string_lossy();
            let text = if key.ends_with("images_dir") {
                text.trim_end_matches('/')
            } else {
                &text
            };
            let body = text.strip_prefix('/').unwrap_or(text);
            if body
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
            {
                return Err(E::invalid(
                    key,
                    format!(
                        "{:?} is not a usable path: it has an empty, `.` or `..` part",
                        path.display().to_string()
                    ),
                    format!("name a path inside the first allowed root, e.g. \"{example}\""),
                ));
            }
        }
        Ok(())
    }

    fn validate_carrier(&self, name: &str, c: &Carrier) -> Result<(), E> {
        let key = format!("carriers.{name}");
        match c {
            Carrier::Mqtt(m) => validate_mqtt(&key, m),
            Carrier::S3(s) => validate_s3(&key, s),
        }
    }

    fn validate_address(&self, name: &str, a: &Address) -> Result<(), E> {
        let key = format!("addresses.{name}");
        if self.mqtt(&a.carrier).is_none() {
            return Err(E::invalid(
                format!("{key}.carrier"),
                format!("{:?} is not a configured mqtt carrier", a.carrier),
                "name an mqtt carrier, e.g. \"mqtt\"",
            ));
        }
        if a.topic.is_empty() {
            return Err(E::invalid(
                format!("{key}.topic"),
                "is empty",
                "set the MQTT topic",
            ));
        }
        if a.send_or_receive == Direction::Send && a.topic.contains(['+', '#']) {
            return Err(E::invalid(
                format!("{key}.topic"),
                "a send topic cannot hold wildcards",
                "use a plain topic such as \"scarecro/confirm_receipt\"",
            ));
        }
        if a.message_type.is_empty() {
            return Err(E::invalid(
                format!("{key}.message_type"),
                "is empty",
                "list the message types on this address",
            ));
        }
        for t in &a.message_type {
            if !self.messages.contains_key(t) {
                return Err(E::invalid(
                    format!("{key}.message_type"),
                    format!("no message {t:?} is configured"),
                    format!("add [messages.{t}] or remove it from the address"),
                ));
            }
        }
        Ok(())
    }
}

fn validate_mqtt(key: &str, m: &MqttCarrier) -> Result<(), E> {
    if let Err(problem) = broker_url(&m.url) {
        return Err(E::invalid(
            format!("{key}.url"),
            format!("{:?} {problem}", m.url),
            "use tcp://host:1883 or mqtt://host:1883, or ssl://host:8883 or mqtts://host:8883 for TLS",
        ));
    }
    if !(0..=2).contains(&m.qos) {
        return Err(E::invalid(
            format!("{key}.qos"),
            format!("{} is not a QoS", m.qos),
            "use 0, 1 or 2",
        ));
    }
    if !matches!(m.version, 3..=5) {
        return Err(E::invalid(
            format!("{key}.version"),
            format!("{} is not an MQTT version", m.version),
            "use 4 for MQTT 3.1.1 or 5 for MQTT 5",
        ));
    }
    if m.keep_alive > Duration::from_secs(u16::MAX.into()) {
        // MQTT carries the keep-alive in two bytes; more would wrap around.
        return Err(E::invalid(
            format!("{key}.keep_alive"),
            format!("{:?} is above MQTT's limit of 65535s", m.keep_alive),
            "use a duration such as \"30s\"",
        ));
    }
    if m.client_id.is_empty() {
        return Err(E::invalid(
            format!("{key}.client_id"),
            "is empty",
            "set a client id unique on the broker",
        ));
    }
    validate_mqtt_tls(key, m)?;
    if m.reconnect_min.is_zero() || m.reconnect_max < m.reconnect_min {
        return Err(E::invalid(
            format!("{key}.reconnect_min"),
            "reconnect_min must be positive and not above reconnect_max",
            "e.g. reconnect_min = \"1s\", reconnect_max = \"60s\"",
        ));
    }
    Ok(())
}

fn validate_s3(key: &str, s: &S3Carrier) -> Result<(), E> {
    if s.bucket.is_empty() || s.bucket == "file://" || s.bucket == "s3://" {
        return Err(E::invalid(
            format!("{key}.bucket"),
            "names no bucket",
            "use \"s3://my-firmware-bucket\" or \"file:///srv/firmware\"",
        ));
    }
    if let Bucket::S3(bucket) = s.location(Path::new(""))
        && bucket.contains(['/', ' '])
    {
        return Err(E::invalid(
            format!("{key}.bucket"),
            format!("{:?} is not a bucket name", s.bucket),
            "name only the bucket, e.g. bucket = \"s3://scarecro-firmware\", and put a folder in it into prefix, e.g. prefix = \"data-gator/\"",
        ));
    }
    if !s.endpoint.is_empty()
        && !s.endpoint.starts_with("https://")
        && !s.endpoint.starts_with("http://")
    {
        return Err(E::invalid(
            format!("{key}.endpoint"),
            format!("{:?} is not an http(s) URL", s.endpoint),
            "use https://host[:port], or leave it empty for AWS",
        ));
    }
    if let Some((_, rest)) = s.endpoint.split_once("://")
        && let Err(problem) = host_port(rest.split('/').next().unwrap_or(rest))
    {
        return Err(E::invalid(
            format!("{key}.endpoint"),
            format!("{:?} {problem}", s.endpoint),
            "use https://host[:port], or leave it empty for AWS",
        ));
    }
    if s.endpoint.starts_with("http://") && !s.allow_http {
        return Err(E::invalid(
            format!("{key}.endpoint"),
            "is plain HTTP but allow_http is false",
            "use https://, or set allow_http = true for a local test store",
        ));
    }
    if s.prefix.split('/').any(|p| p == "..") {
        return Err(E::invalid(
            format!("{key}.prefix"),
            "contains `..`",
            "use a plain key prefix such as \"firmware/\"",
        ));
    }
    for (field, d) in [
        ("connect_timeout", s.connect_timeout),
        ("timeout", s.timeout),
        ("header_timeout", s.header_timeout),
    ] {
        if d.is_zero() {
            return Err(E::invalid(
                format!("{key}.{field}"),
                "is 0, so every request would time out at once",
                "use a duration such as \"30s\"",
            ));
        }
    }
    Ok(())
}

/// Why paho-mqtt cannot connect to `url`, if it cannot.
fn broker_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("is not a broker URL".into());
    };
    if !MQTT_SCHEMES.contains(&scheme) {
        return Err(format!(
            "has scheme {scheme}://, which is not tcp, mqtt, ssl or mqtts"
        ));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return Err("has a path; a broker URL ends after the port".into());
    }
    host_port(authority)
}

/// Why `authority` (`host`, `host:port`, `[v6]:port`) is no place to
/// connect to, if it is not.
fn host_port(authority: &str) -> Result<(), String> {
    if authority.contains('@') {
        return Err("holds a user name or password, which belong in their own keys".into());
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, rest)) => (host, Some(rest.strip_prefix(':').unwrap_or(rest))),
            None => return Err("has an unclosed `[`".into()),
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err("names no host".into());
    }
    match port {
        Some(p) if !matches!(p.parse::<u16>(), Ok(1..)) => Err(format!(
            "has port {p:?}, and a port is a number from 1 to 65535"
        )),
        _ => Ok(()),
    }
}

/// The TLS settings of an MQTT carrier: only on a TLS URL, every file
/// readable, the client certificate and its key as a pair.
fn validate_mqtt_tls(key: &str, m: &MqttCarrier) -> Result<(), E> {
    if let Some((field, _)) = m.tls_files().next()
        && !m.uses_tls()
    {
        return Err(E::invalid(
            format!("{key}.url"),
            format!(
                "{:?} is plain MQTT, so {key}.{field} would be ignored",
                m.url
            ),
            "use ssl:// or mqtts:// (e.g. ssl://host:8883) to connect with TLS, \
             or leave ca_file, cert_file and key_file empty",
        ));
    }
    for (field, path) in m.tls_files() {
        if let Err(problem) = readable_file(path) {
            let fix = match field {
                "ca_file" => "point it at a PEM CA bundle, or leave it empty for the system store",
                "cert_file" => {
                    "point it at the client's PEM certificate, or leave cert_file and key_file empty"
                }
                _ => {
                    "point it at the PEM private key of cert_file, or leave cert_file and key_file empty"
                }
            };
            return Err(E::invalid(
                format!("{key}.{field}"),
                format!("{path} {problem}"),
                fix,
            ));
        }
    }
    if !m.cert_file.is_empty() && m.key_file.is_empty() {
        return Err(E::invalid(
            format!("{key}.key_file"),
            "is empty, but cert_file is set: a client certificate needs its private key",
            "set key_file to the PEM private key of cert_file, or leave both empty",
        ));
    }
    if m.cert_file.is_empty() && !m.key_file.is_empty() {
        return Err(E::invalid(
            format!("{key}.cert_file"),
            "is empty, but key_file is set: a private key needs its client certificate",
            "set cert_file to the client's PEM certificate, or leave both empty",
        ));
    }
    if m.key_password.is_empty()
        && !m.key_file.is_empty()
        && std::fs::read_to_string(&m.key_file).is_ok_and(|pem| pem.contains("ENCRYPTED"))
    {
        // OpenSSL would otherwise ask for the passphrase on a terminal.
        return Err(E::invalid(
            format!("{key}.key_password"),
            format!("is empty, but {} is an encrypted key", m.key_file),
            "set key_password or key_password_file to its passphrase",
        ));
    }
    if !m.key_password.is_empty() {
        let field = if m.key_password_file.is_some() {
            "key_password_file"
        } else {
            "key_password"
        };
        if m.key_file.is_empty() {
            return Err(E::invalid(
                format!("{key}.{field}"),
                "is set, but there is no key_file it could unlock",
                "set cert_file and key_file, or leave the key password empty",
            ));
        }
        if m.key_password.expose().contains('\0') {
            return Err(E::invalid(
                format!("{key}.{field}"),
                "holds a NUL byte",
                "give the passphrase of key_file as plain text",
            ));
        }
    }
    Ok(())
}

/// Why `path` cannot be read, if it cannot.
fn readable_file(path: &str) -> Result<(), String> {
    match std::fs::metadata(path) {
        Err(e) => Err(format!("is not a readable file ({e})")),
        Ok(meta) if !meta.is_file() => Err("is not a file".into()),
        Ok(_) => std::fs::File::open(path)
            .map(drop)
            .map_err(|e| format!("is not a readable file ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use crate::{Env, SettingsError, load_with_env};

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn key_of(e: SettingsError) -> String {
        match e {
            SettingsError::Invalid { key, .. } => key,
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let s = load_with_env(None, &env(&[])).unwrap();
        assert_eq!(s.system.id, "local-gateway");
        assert_eq!(
            s.tasks["download_new_firmware_image"].config_name,
            "s3_firmware_ota"
        );
    }

    #[test]
    fn environment_overrides_with_double_underscores() {
        let s = load_with_env(
            None,
            &env(&[
                ("GATOR_OTA__SYSTEM__ID", "gw-17"),
                ("GATOR_OTA__CARRIERS__MQTT__QOS", "2"),
                ("GATOR_OTA__CARRIERS__MQTT__PASSWORD", "1234"),
                ("GATOR_OTA__FIRMWARE__ALLOWED_ROOTS", "/a,/b"),
                ("AWS_SECRET_ACCESS_KEY", "shh"),
                ("AWS_REGION", "eu-west-1"),
            ]),
        )
        .unwrap();
        assert_eq!(s.system.id, "gw-17");
        assert_eq!(s.mqtt("mqtt").unwrap().qos, 2);
        assert_eq!(s.mqtt("mqtt").unwrap().password.expose(), "1234");
        assert_eq!(s.allowed_roots().len(), 2);
        let printed = s.to_redacted_toml();
        assert!(
            !printed.contains("1234") && !printed.contains("shh"),
            "{printed}"
        );
        assert!(printed.contains("eu-west-1"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("GATOR_OTA__CARRIERS__MQTT__QOS", "7", "carriers.mqtt.qos"),
            (
                "GATOR_OTA__CARRIERS__MQTT__URL",
                "http://x",
                "carriers.mqtt.url",
            ),
            (
                "GATOR_OTA__TASKS__DOWNLOAD_NEW_FIRMWARE_IMAGE__CONFIG_NAME",
                "nope",
                "tasks.download_new_firmware_image.config_name",
            ),
            (
                "GATOR_OTA__TASKS__DOWNLOAD_NEW_FIRMWARE_IMAGE__FUNCTION",
                "f",
                "tasks.download_new_firmware_image.function",
            ),
            ("GATOR_OTA__SYSTEM__ID", "a/b", "system.id"),
            (
                "GATOR_OTA__CARRIERS__S3_FIRMWARE_OTA__ENDPOINT",
                "http://127.0.0.1:9000",
                "carriers.s3_firmware_ota.endpoint",
            ),
            ("GATOR_OTA__PIPELINE__QUEUE", "0", "pipeline.queue"),
        ];
        for (var, value, key) in cases {
            let err = load_with_env(None, &env(&[(var, value)])).unwrap_err();
            assert_eq!(key_of(err), key, "{var}={value}");
        }
    }

    #[test]
    fn file_layer_sits_between_defaults_and_environment() {
        let dir = std::env::temp_dir().join(format!("gator-ota-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("s.toml");
        std::fs::write(&file, "[system]\nid = \"from-file\"\ndata_dir = \"/x\"\n").unwrap();
        let s = load_with_env(Some(&file), &env(&[])).unwrap();
        assert_eq!(s.system.id, "from-file");
        let s = load_with_env(Some(&file), &env(&[("GATOR_OTA__SYSTEM__ID", "from-env")])).unwrap();
        assert_eq!(s.system.id, "from-env");
        assert_eq!(s.system.data_dir, std::path::PathBuf::from("/x"));
        std::fs::write(&file, "[system]\nidd = 1\n").unwrap();
        assert!(load_with_env(Some(&file), &env(&[])).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secret_files_are_read() {
        let dir = std::env::temp_dir().join(format!("gator-ota-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cr3t\n").unwrap();
        let s = load_with_env(
            None,
            &env(&[(
                "GATOR_OTA__CARRIERS__MQTT__PASSWORD_FILE",
                file.to_str().unwrap(),
            )]),
        )
        .unwrap();
        assert_eq!(s.mqtt("mqtt").unwrap().password.expose(), "s3cr3t");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The error for `pairs`, as (key, whole message).
    fn tls_error(pairs: &[(&str, &str)]) -> (String, String) {
        let err = load_with_env(None, &env(pairs)).unwrap_err();
        let text = err.to_string();
        (key_of(err), text)
    }

    #[test]
    fn tls_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let pem = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, "-----BEGIN CERTIFICATE-----\n").unwrap();
            path.to_str().unwrap().to_string()
        };
        let (ca, cert, key) = (pem("ca.pem"), pem("client.pem"), pem("client.key"));
        let missing = dir.path().join("missing.pem");
        let missing = missing.to_str().unwrap();
        let ssl = ("GATOR_OTA__CARRIERS__MQTT__URL", "ssl://broker:8883");

        let s = load_with_env(
            None,
            &env(&[
                ssl,
                ("GATOR_OTA__CARRIERS__MQTT__CA_FILE", &ca),
                ("GATOR_OTA__CARRIERS__MQTT__CERT_FILE", &cert),
                ("GATOR_OTA__CARRIERS__MQTT__KEY_FILE", &key),
                ("GATOR_OTA__CARRIERS__MQTT__KEY_PASSWORD", "key-pass-value"),
            ]),
        )
        .unwrap();
        let m = s.mqtt("mqtt").unwrap();
        assert_eq!((m.cert_file.as_str(), m.key_file.as_str()), (&*cert, &*key));
        assert_eq!(m.key_password.expose(), "key-pass-value");
        let printed = s.to_redacted_toml();
        assert!(!printed.contains("key-pass-value"), "{printed}");
        assert!(
            printed.contains("key_password = \"<redacted>\""),
            "{printed}"
        );

        let (k, text) = tls_error(&[ssl, ("GATOR_OTA__CARRIERS__MQTT__CERT_FILE", &cert)]);
        assert_eq!(k, "carriers.mqtt.key_file", "{text}");
        assert!(text.contains("set key_file"), "{text}");
        let (k, _) = tls_error(&[ssl, ("GATOR_OTA__CARRIERS__MQTT__KEY_FILE", &key)]);
        assert_eq!(k, "carriers.mqtt.cert_file");
        for field in ["CA_FILE", "CERT_FILE", "KEY_FILE"] {
            let var = format!("GATOR_OTA__CARRIERS__MQTT__{field}");
            let (k, text) = tls_error(&[ssl, (&var, missing)]);
            assert_eq!(
                k,
                format!("carriers.mqtt.{}", field.to_lowercase()),
                "{text}"
            );
            assert!(text.contains("is not a readable file"), "{text}");
            let (k, text) = tls_error(&[
                ("GATOR_OTA__CARRIERS__MQTT__URL", "tcp://broker:1883"),
                (&var, &ca),
            ]);
            assert_eq!(k, "carriers.mqtt.url", "{text}");
            assert!(text.contains("use ssl:// or mqtts://"), "{text}");
        }
        let encrypted = dir.path().join("encrypted.key");
        std::fs::write(&encrypted, "-----BEGIN ENCRYPTED PRIVATE KEY-----\n").unwrap();
        let (k, text) = tls_error(&[
            ssl,
            ("GATOR_OTA__CARRIERS__MQTT__CERT_FILE", &cert),
            (
                "GATOR_OTA__CARRIERS__MQTT__KEY_FILE",
                encrypted.to_str().unwrap(),
            ),
        ]);
        assert_eq!(k, "carriers.mqtt.key_password", "{text}");
        assert!(text.contains("encrypted key"), "{text}");
        let (k, text) = tls_error(&[ssl, ("GATOR_OTA__CARRIERS__MQTT__KEY_PASSWORD", "pw")]);
        assert_eq!(k, "carriers.mqtt.key_password", "{text}");
        let (k, text) = tls_error(&[
            ssl,
            (
                "GATOR_OTA__CARRIERS__MQTT__CA_FILE",
                dir.path().to_str().unwrap(),
            ),
        ]);
        assert_eq!(k, "carriers.mqtt.ca_file", "{text}");
        assert!(text.contains("is not a file"), "{text}");
    }

    #[test]
    fn key_password_file_is_read_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["client.pem", "client.key"] {
            std::fs::write(dir.path().join(name), "pem").unwrap();
        }
        let pw = dir.path().join("key-pass");
        std::fs::write(&pw, "from-a-file\n").unwrap();
        let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        let s = load_with_env(
            None,
            &env(&[
                ("GATOR_OTA__CARRIERS__MQTT__URL", "mqtts://broker:8883"),
                ("GATOR_OTA__CARRIERS__MQTT__CERT_FILE", &path("client.pem")),
                ("GATOR_OTA__CARRIERS__MQTT__KEY_FILE", &path("client.key")),
                (
                    "GATOR_OTA__CARRIERS__MQTT__KEY_PASSWORD_FILE",
                    &path("key-pass"),
                ),
            ]),
        )
        .unwrap();
        let m = s.mqtt("mqtt").unwrap();
        assert_eq!(m.key_password.expose(), "from-a-file");
        assert!(!format!("{m:?}").contains("from-a-file"));
        assert!(!s.to_redacted_toml().contains("from-a-file"));

        let (k, _) = tls_error(&[
            ("GATOR_OTA__CARRIERS__MQTT__URL", "mqtts://broker:8883"),
            (
                "GATOR_OTA__CARRIERS__MQTT__KEY_PASSWORD_FILE",
                &path("nope"),
            ),
        ]);
        assert_eq!(k, "carriers.mqtt.key_password_file");
    }
}
