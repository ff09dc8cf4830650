//! Wiring: a [`Plan`] in, running actors out.
//!
//! Every decision from settings is already in the plan; this module makes
//! the folders, opens the journal and spools, and starts the actors. Nothing
//! here restarts an actor: a stage handles its own errors (a failed job is a
//! FAILED status, a lost broker a reconnect), a panic aborts the process
//! (`panic = "abort"`) and ingress ends it when paho's stream ends, so
//! systemd restarts the service, and the journal, inbox and outbox make a
//! restart lose nothing.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr, Recipient};
use paho_mqtt as paho;
use tracing::{info, warn};

use crate::egress::{EgressConfig, MqttEgress};
use crate::ingress::{IngressConfig, MqttIngress};
use crate::job::{Runner, RunnerParts};
use crate::journal::{JobRecord, Journal};
use crate::messages::RunTask;
use crate::mqtt::{self, MqttSetupError};
use crate::paths::{Confinement, STATE_DIR};
use crate::plan::{Plan, S3Plan};
use crate::router::TaskRouter;
use crate::s3_carrier::{S3CarrierActor, StoreSetupError};
use crate::spool::Spool;
use crate::status::StatusSink;
use crate::writer::{FsWriter, TEMP_PREFIX};

/// What can still go wrong once the plan is made: the disk and the
/// libraries' own set-up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot prepare folder {dir}: {source}")]
    Folder {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Mqtt(#[from] MqttSetupError),
    #[error(transparent)]
    Store(#[from] StoreSetupError),
}

fn folder_err(dir: &Path) -> impl FnOnce(std::io::Error) -> StartError {
    let dir = dir.display().to_string();
    move |source| StartError::Folder { dir, source }
}

/// The running pipeline. Dropping it does not stop the actors; call
/// [`Service::shutdown`] to leave the broker politely.
#[must_use = "keep the service to shut it down"]
pub struct Service {
    client: paho::AsyncClient,
    _ingress: Addr<MqttIngress>,
}

impl Service {
    /// Starts every actor on the current actix system, in the order each
    /// needs the next: writer and egress, the S3 carriers, the router, and
    /// ingress last, so no message arrives before its path exists.
    pub fn start(plan: Plan) -> Result<Self, StartError> {
        for dir in plan.folders() {
            std::fs::create_dir_all(&dir).map_err(folder_err(&dir))?;
        }
        let settings = &plan.settings;
        let state = settings.system.data_dir.join(STATE_DIR);
        let roots = settings.allowed_roots();
        let confinement = Arc::new(Confinement::new(&roots).map_err(folder_err(&roots[0]))?);
        for root in confinement.roots() {
            sweep_temporaries(root, 4);
        }
        let client = mqtt::client(&plan.mqtt.name, &plan.mqtt.carrier)?;

        let chunks = settings.pipeline.write_chunks;
        let writer = FsWriter::new(chunks).start();
        let egress = start_egress(&plan, &client, &state)?;
        let status = StatusSink {
            egress: egress.clone().recipient(),
            system_id: settings.system.id.clone(),
        };
        let (journal, pending) = Journal::open(&state).map_err(folder_err(&state))?;
        let (inbox, held) = open_inbox(&state, &pending).map_err(folder_err(&state))?;
        let wiring = Wiring {
            writer,
            egress: egress.clone(),
            status: status.clone(),
            journal: Arc::new(journal),
            confinement,
        };
        let carriers = start_s3_carriers(&plan, &wiring, pending)?;
        let router = TaskRouter::new(&plan.tasks, &carriers).start();

        let cfg = IngressConfig {
            client: client.clone(),
            connect: plan.mqtt.connect.clone(),
            subscriptions: plan.subscriptions.clone(),
            specs: settings.messages.clone().into_iter().collect(),
            router: router.recipient(),
            qos: plan.mqtt.carrier.qos,
            inbox: Arc::new(inbox),
            held,
            max_payload: settings.pipeline.max_payload_bytes,
            backlog_warning: settings.pipeline.inbox_warning,
            retry_min: plan.mqtt.carrier.reconnect_min,
            retry_max: plan.mqtt.carrier.reconnect_max,
            topic_map: plan.mqtt.topic_map.clone(),
            status,
            link: egress.recipient(),
        };
        let ingress = <MqttIngress as Actor>::create(move |ctx| MqttIngress::create(cfg, ctx));
        info!(system_id = %settings.system.id, broker = %plan.mqtt.carrier.url,
            security = %mqtt::describe_tls(&plan.mqtt.carrier), "gator-ota started");
        Ok(Self {
            client,
            _ingress: ingress,
        })
    }

    /// Leaves the broker, giving in-flight acknowledgements a moment.
    pub async fn shutdown(self) {
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

/// MQTT egress with the outbox a previous run left.
fn start_egress(
    plan: &Plan,
    client: &paho::AsyncClient,
    state: &Path,
) -> Result<Addr<MqttEgress>, StartError> {
    let outbox_dir = state.join("outbox");
    let (outbox, held) = Spool::open(&outbox_dir).map_err(folder_err(&outbox_dir))?;
    let window = plan.settings.pipeline.outbox_window;
    let cfg = EgressConfig {
        client: client.clone(),
        routes: plan.send_routes.clone(),
        qos: plan.mqtt.carrier.qos,
        outbox: Arc::new(outbox),
        held,
        window,
        mailbox: window,
    };
    Ok(MqttEgress::new(cfg).start())
}

/// What every S3 carrier's jobs share.
struct Wiring {
    writer: Addr<FsWriter>,
    egress: Addr<MqttEgress>,
    status: StatusSink,
    journal: Arc<Journal>,
    confinement: Arc<Confinement>,
}

/// One actor per S3 carrier some task names, each with its own store.
fn start_s3_carriers(
    plan: &Plan,
    wiring: &Wiring,
    pending: Vec<JobRecord>,
) -> Result<HashMap<String, Recipient<RunTask>>, StartError> {
    let mut carriers: HashMap<String, Recipient<RunTask>> = HashMap::new();
    let mut pending = Some(pending);
    for s3 in &plan.s3 {
        let mut actor = s3_carrier(plan, s3, wiring)?;
        // The journal does not say which carrier a job came from; with one
        // firmware carrier (the SCARECRO setup) they all go to it.
        if let Some(p) = pending.take() {
            actor.resume(p);
        }
        carriers.insert(s3.name.clone(), actor.start().recipient());
    }
    Ok(carriers)
}

fn s3_carrier(plan: &Plan, s3: &S3Plan, wiring: &Wiring) -> Result<S3CarrierActor, StartError> {
    let settings = &plan.settings;
    let runner = Arc::new(Runner::new(RunnerParts {
        store: s3.store.clone().open()?,
        append: wiring.writer.clone().recipient(),
        commit: wiring.writer.clone().recipient(),
        remove: wiring.writer.clone().recipient(),
        egress: wiring.egress.clone().recipient(),
        status: wiring.status.clone(),
        journal: wiring.journal.clone(),
        policy: s3.policy.clone(),
        system_id: settings.system.id.clone(),
    }));
    Ok(S3CarrierActor::new(
        s3.name.clone(),
        runner,
        wiring.confinement.clone(),
        s3.defaults.clone(),
        settings.pipeline.queue,
        settings.jobs.concurrency,
    ))
}

/// Opens the inbox and returns the messages a previous run held but did not
/// hand on. A message whose job reached the journal just before a stop is
/// not taken a second time.
fn open_inbox(state: &Path, pending: &[JobRecord]) -> std::io::Result<(Spool, Vec<u64>)> {
    let (inbox, held) = Spool::open(&state.join("inbox"))?;
    let journaled: HashSet<u64> = pending.iter().filter_map(|r| r.receipt).collect();
    if let Some(&last) = journaled.iter().max() {
        inbox.number_after(last);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(receipt: u64) -> JobRecord {
        JobRecord {
            seq: 1,
            msg_id: format!("m{receipt}"),
            content: serde_json::json!({}),
            state: crate::journal::JobState::Queued,
            etag: None,
            receipt: Some(receipt),
        }
    }

    /// A job journaled from inbox entry 5 is still running when the service
    /// restarts with an empty inbox; the next message must not become entry
    /// 5, or a later start would drop it as that job's.
    #[test]
    fn new_inbox_entries_never_take_the_number_of_a_journaled_job() {
        let state = tempfile::tempdir().unwrap();
        let (inbox, held) = open_inbox(state.path(), &[record(5)]).unwrap();
        assert!(held.is_empty());
        let seq = inbox.put("t", b"new").unwrap();
        assert!(seq > 5, "new entry numbered {seq}");
        drop(inbox);
        let (_, held) = open_inbox(state.path(), &[record(5)]).unwrap();
        assert_eq!(held, vec![seq], "the new message is kept");
    }
}
