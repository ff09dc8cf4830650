//! Wiring: settings in, a running supervised pipeline out.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, Recipient, Supervisor};
use gator_ota_settings::{Carrier, Direction, S3Carrier, Settings};
use paho_mqtt as paho;
use tracing::{info, warn};

use crate::egress::{EgressConfig, MqttEgress};
use crate::firmware::Defaults;
use crate::http::{FirmwareServer, HttpError};
use crate::ingress::{IngressConfig, MqttIngress, Subscription};
use crate::job::{Policy, Runner, RunnerParts};
use crate::journal::{JobRecord, Journal};
use crate::messages::RunTask;
use crate::mqtt::{self, MqttSetupError};
use crate::paths::{Confinement, STATE_DIR};
use crate::router::{RouteError, TaskRouter};
use crate::s3_carrier::{S3CarrierActor, StoreSetupError, open_store};
use crate::scarecro_topics::TopicMap;
use crate::signature::{KeyError, Keyring};
use crate::spool::Spool;
use crate::status::StatusSink;
use crate::writer::{FsWriter, TEMP_PREFIX};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot prepare folder {dir}: {source}")]
    Folder {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "addresses use MQTT carriers {0:?}; gator-ota runs one MQTT connection, so point every address at the same carrier"
    )]
    SeveralMqttCarriers(Vec<String>),
    #[error("no address uses an MQTT carrier")]
    NoMqttCarrier,
    #[error(transparent)]
    Mqtt(#[from] MqttSetupError),
    #[error(transparent)]
    Store(#[from] StoreSetupError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("firmware signing keys: {0}")]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Http(#[from] HttpError),
}

/// The running pipeline. Dropping it does not stop the actors; call
/// [`Service::shutdown`] to leave the broker politely.
#[must_use = "keep the service to shut it down"]
pub struct Service {
    client: paho::AsyncClient,
    _ingress: Addr<MqttIngress>,
    http: Option<FirmwareServer>,
}

impl Service {
    /// Starts every actor on the current actix system.
    pub fn start(settings: &Settings) -> Result<Self, StartError> {
        let data_dir = &settings.system.data_dir;
        let folder_err = |dir: &Path| {
            let dir = dir.display().to_string();
            move |source| StartError::Folder { dir, source }
        };
        std::fs::create_dir_all(data_dir).map_err(folder_err(data_dir))?;
        let roots = settings.allowed_roots();
        let confinement = Arc::new(Confinement::new(&roots).map_err(folder_err(&roots[0]))?);
        for root in confinement.roots() {
            sweep_temporaries(root, 4);
        }

        let (mqtt_name, mqtt_carrier) = the_mqtt_carrier(settings)?;
        let state = data_dir.join(STATE_DIR);
        let client = mqtt::client(mqtt_name, mqtt_carrier)?;
        let connect = mqtt::connect_options(mqtt_name, mqtt_carrier)?;

        let chunks = settings.pipeline.write_chunks;
        let writer = Supervisor::start(move |_| FsWriter::new(chunks));

        let routes = send_routes(settings);
        let outbox_dir = state.join("outbox");
        let (outbox, held) = Spool::open(&outbox_dir).map_err(folder_err(&outbox_dir))?;
        let egress_cfg = EgressConfig {
            client: client.clone(),
            routes,
            qos: mqtt_carrier.qos,
            outbox: Arc::new(outbox),
            held,
            window: settings.pipeline.mqtt_buffer,
            mailbox: settings.pipeline.mqtt_buffer,
        };
        let egress = Supervisor::start(move |_| MqttEgress::new(egress_cfg));

        let keyring = Arc::new(Keyring::load(
            &settings.firmware.public_keys,
            &settings.firmware.public_key_files,
        )?);
        let (journal, pending) = Journal::open(&state).map_err(folder_err(&state))?;
        let journal = Arc::new(journal);
        let http = FirmwareServer::start(&settings.http, &confinement, journal.clone(), &state)?;
        let (inbox, held) = open_inbox(&state, &pending).map_err(folder_err(&state))?;
        let status = StatusSink {
            egress: egress.clone().recipient(),
            system_id: settings.system.id.clone(),
        };
        let wiring = Wiring {
            writer,
            egress: egress.clone(),
            status: status.clone(),
            journal,
            keyring,
            confinement,
        };
        let carriers = start_s3_carriers(settings, &wiring, pending)?;

        let router = TaskRouter::new(settings, &carriers)?;
        let consumed: Vec<String> = router.message_types().map(str::to_string).collect();
        let router = Supervisor::start(move |_| router);

        let subscriptions = subscriptions(settings, &consumed);
        let cfg = IngressConfig {
            client: client.clone(),
            connect,
            subscriptions,
            specs: settings.messages.clone().into_iter().collect(),
            router: router.recipient(),
            qos: mqtt_carrier.qos,
            inbox: Arc::new(inbox),
            held,
            max_payload: settings.pipeline.max_payload_bytes,
            backlog_warning: settings.pipeline.mqtt_buffer,
            retry_min: mqtt_carrier.reconnect_min,
            retry_max: mqtt_carrier.reconnect_max,
            topic_map: TopicMap::from_routes(&mqtt_carrier.scarecro_topics),
            status: status.clone(),
            link: egress.clone().recipient(),
        };
        let ingress = Supervisor::start(move |ctx| MqttIngress::create(cfg, ctx));
        info!(system_id = %settings.system.id, broker = %mqtt_carrier.url,
            security = %mqtt::describe_tls(mqtt_carrier), "gator-ota started");
        Ok(Self {
            client,
            _ingress: ingress,
            http,
        })
    }

    /// Stops the firmware server (downloads in flight get a few seconds),
    /// then leaves the broker, giving in-flight acknowledgements a moment.
    pub async fn shutdown(self) {
        if let Some(http) = self.http {
            http.stop().await;
        }
        if self.client.is_connected() {
            let done = self.client.disconnect(None);
            if tokio::time::timeout(Duration::from_secs(2), done)
                .await
                .is_err()
            {
                warn!("the broker did not acknowledge the disconnect in time");
            }
        }
    }
}

/// Every message type a send address carries, and the topics it goes to.
fn send_routes(settings: &Settings) -> HashMap<String, Vec<String>> {
    let mut routes: HashMap<String, Vec<String>> = HashMap::new();
    for address in settings
        .addresses
        .values()
        .filter(|a| a.send_or_receive == Direction::Send)
    {
        for t in &address.message_type {
            routes
                .entry(t.clone())
                .or_default()
                .push(address.topic.clone());
        }
    }
    routes
}

/// The receive addresses; a message type a task runs on that none of them
/// carries is worth a warning, not a refusal.
fn subscriptions(settings: &Settings, consumed: &[String]) -> Vec<Subscription> {
    let subscriptions: Vec<Subscription> = settings
        .addresses
        .iter()
        .filter(|(_, a)| a.send_or_receive == Direction::Receive)
        .map(|(name, a)| Subscription {
            address: name.clone(),
            topic: a.topic.clone(),
            message_types: a.message_type.clone(),
        })
        .collect();
    for t in consumed {
        if !subscriptions.iter().any(|s| s.message_types.contains(t)) {
            warn!(message_type = %t, "a task runs on this message type but no receive address carries it");
        }
    }
    subscriptions
}

/// What every S3 carrier's jobs share.
struct Wiring {
    writer: Addr<FsWriter>,
    egress: Addr<MqttEgress>,
    status: StatusSink,
    journal: Arc<Journal>,
    keyring: Arc<Keyring>,
    confinement: Arc<Confinement>,
}

/// One actor per S3 carrier some task names, each with its own store.
fn start_s3_carriers(
    settings: &Settings,
    wiring: &Wiring,
    pending: Vec<JobRecord>,
) -> Result<HashMap<String, Recipient<RunTask>>, StartError> {
    let mut carriers: HashMap<String, Recipient<RunTask>> = HashMap::new();
    let mut pending = Some(pending);
    for task in settings.tasks.values() {
        let name = &task.config_name;
        let Some(Carrier::S3(s3)) = settings.carriers.get(name) else {
            continue;
        };
        if carriers.contains_key(name) {
            continue;
        }
        let mut actor = s3_carrier(settings, name, s3, wiring)?;
        // The journal does not say which carrier a job came from; with one
        // firmware carrier (the SCARECRO setup) they all go to it.
        if let Some(p) = pending.take() {
            actor.resume(p);
        }
        let addr = Supervisor::start(move |_| actor);
        carriers.insert(name.clone(), addr.recipient());
    }
    Ok(carriers)
}

fn s3_carrier(
    settings: &Settings,
    name: &str,
    s3: &S3Carrier,
    wiring: &Wiring,
) -> Result<S3CarrierActor, StartError> {
    let runner = Arc::new(Runner::new(RunnerParts {
        store: open_store(name, s3, &settings.system.data_dir)?,
        append: wiring.writer.clone().recipient(),
        commit: wiring.writer.clone().recipient(),
        remove: wiring.writer.clone().recipient(),
        egress: wiring.egress.clone().recipient(),
        status: wiring.status.clone(),
        journal: wiring.journal.clone(),
        policy: policy(settings, s3, &wiring.keyring),
        system_id: settings.system.id.clone(),
    }));
    Ok(S3CarrierActor::new(
        name.to_string(),
        runner,
        wiring.confinement.clone(),
        Defaults {
            images_dir: settings.firmware.images_dir.display().to_string(),
            pointer_file: settings.firmware.pointer_file.display().to_string(),
            prefix: s3.prefix.clone(),
        },
        settings.pipeline.queue,
        settings.jobs.concurrency,
    ))
}

fn policy(settings: &Settings, s3: &S3Carrier, keyring: &Arc<Keyring>) -> Policy {
    Policy {
        attempts: settings.jobs.attempts,
        backoff_min: settings.jobs.backoff_min,
        backoff_max: settings.jobs.backoff_max,
        idle_timeout: settings.jobs.idle_timeout,
        header_timeout: s3.header_timeout,
        reserve_bytes: settings.jobs.reserve_bytes,
        keep_images: settings.jobs.keep_images,
        progress_step: settings.jobs.progress_step,
        max_image_bytes: settings.firmware.max_image_bytes,
        max_bytes_per_second: s3.max_bytes_per_second,
        require_signature: settings.firmware.require_signature,
        keyring: keyring.clone(),
    }
}

/// Opens the inbox and returns the messages a previous run held but did not
/// hand on. A message whose job reached the journal just before a stop is
/// not taken a second time.
fn open_inbox(state: &Path, pending: &[JobRecord]) -> std::io::Result<(Spool, Vec<u64>)> {
    let (inbox, held) = Spool::open(&state.join("inbox"))?;
    let journaled: HashSet<u64> = pending.iter().filter_map(|r| r.receipt).collect();
    let (done, held): (Vec<u64>, Vec<u64>) = held.into_iter().partition(|s| journaled.contains(s));
    for seq in done {
        inbox.remove(seq);
    }
    if !held.is_empty() {
        info!(
            messages = held.len(),
            "the inbox holds messages from before the last stop; they are taken first"
        );
    }
    Ok((inbox, held))
}

fn the_mqtt_carrier(
    settings: &Settings,
) -> Result<(&str, &gator_ota_settings::MqttCarrier), StartError> {
    let mut names: Vec<&String> = settings.addresses.values().map(|a| &a.carrier).collect();
    names.sort();
    names.dedup();
    match names.as_slice() {
        [] => Err(StartError::NoMqttCarrier),
        [one] => settings
            .mqtt(one)
            .map(|m| (one.as_str(), m))
            .ok_or(StartError::NoMqttCarrier),
        many => Err(StartError::SeveralMqttCarriers(
            many.iter().map(|s| s.to_string()).collect(),
        )),
    }
}

/// Removes temporaries a killed process left behind (never at a destination,
/// but they take space). Staging files (`.part`) stay: the unfinished job
/// they belong to resumes from them, and a job that ends removes its own.
fn sweep_temporaries(dir: &Path, depth: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if kind.is_file() && name.starts_with(TEMP_PREFIX) && name.ends_with(".tmp") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    info!(path = %entry.path().display(), "removed a leftover temporary file")
                }
                Err(e) => {
                    warn!(path = %entry.path().display(), error = %e, "cannot remove a leftover temporary file")
                }
            }
        } else if kind.is_dir() && depth > 0 {
            sweep_temporaries(&entry.path(), depth - 1);
        }
    }
}
