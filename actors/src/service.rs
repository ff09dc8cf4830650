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

use crate::egress::{EgressConfig, Fanout, MqttEgress, Route};
use crate::fleet::rollout::Gate;
use crate::fleet::{FleetActor, FleetConfig, Flush};
use crate::http::device_log::Tap;
use crate::http::{FirmwareServer, FleetLinks, HttpError};
use crate::ingress::{IngressConfig, MqttIngress};
use crate::job::{Runner, RunnerParts};
use crate::journal::{JobRecord, Journal};
use crate::messages::{Publish, RunTask};
use crate::metrics::Metrics;
use crate::mqtt::{self, MqttSetupError};
use crate::paths::{Confinement, STATE_DIR};
use crate::plan::{MqttPlan, Plan, S3Plan};
use crate::router::TaskRouter;
use crate::s3_carrier::{S3CarrierActor, StoreSetupError};
use crate::spool::Spool;
use crate::staging::sweep_temporaries;
use crate::status::StatusSink;
use crate::writer::FsWriter;

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
    #[error(transparent)]
    Http(#[from] HttpError),
}

fn folder_err(dir: &Path) -> impl FnOnce(std::io::Error) -> StartError {
    let dir = dir.display().to_string();
    move |source| StartError::Folder { dir, source }
}

/// The running pipeline. Dropping it does not stop the actors; call
/// [`Service::shutdown`] to leave the brokers politely.
#[must_use = "keep the service to shut it down"]
pub struct Service {
    clients: Vec<paho::AsyncClient>,
    _ingress: Vec<Addr<MqttIngress>>,
    http: Option<FirmwareServer>,
    fleet: Option<Addr<FleetActor>>,
}

/// One MQTT carrier's connection and egress, before its ingress starts.
struct Link<'p> {
    plan: &'p MqttPlan,
    client: paho::AsyncClient,
    egress: Addr<MqttEgress>,
}

impl Service {
    /// Starts every actor on the current actix system, in the order each
    /// needs the next: writer and egress, the S3 carriers, the router, and
    /// ingress last, so no message arrives before its path exists.
    pub fn start(mut plan: Plan) -> Result<Self, StartError> {
        for dir in plan.folders() {
            std::fs::create_dir_all(&dir).map_err(folder_err(&dir))?;
        }
        let state = plan.settings.system.data_dir.join(STATE_DIR);
        keep_main_carrier(&mut plan, &state).map_err(folder_err(&state))?;
        let settings = &plan.settings;
        let roots = settings.allowed_roots();
        let confinement = Arc::new(Confinement::new(&roots).map_err(folder_err(&roots[0]))?);
        for root in confinement.roots() {
            sweep_temporaries(root, 4);
        }
        let writer = FsWriter::default().start();
        let links = plan
            .mqtt
            .iter()
            .map(|p| start_link(&plan, p, &state))
            .collect::<Result<Vec<_>, _>>()?;
        let fanout = start_fanout(&plan, &links);
        let metrics = Arc::new(Metrics::default());
        let status = StatusSink {
            egress: fanout.clone(),
            system_id: settings.system.id.clone(),
            metrics: metrics.clone(),
        };
        let (journal, pending) = Journal::open(&state).map_err(folder_err(&state))?;
        let journal = Arc::new(journal);
        let gate = rollout_gate(&plan, &state);
        let fleet =
            start_fleet(&plan, &links, &fanout, &journal, &metrics, &confinement).map(|cfg| {
                FleetActor::load(FleetConfig {
                    rollout: gate.clone(),
                    ..cfg
                })
                .start()
            });
        let http = start_http(
            &plan,
            &confinement,
            &journal,
            &state,
            metrics,
            fleet.as_ref(),
            gate,
        )?;
        let mut inboxes = Vec::new();
        for link in &links {
            let (inbox_dir, _) = link.plan.spool_dirs(&state);
            let of = (!link.plan.main).then_some(link.plan.name.as_str());
            inboxes.push(open_inbox(&inbox_dir, &pending, of).map_err(folder_err(&inbox_dir))?);
        }
        let wiring = Wiring {
            writer,
            egress: fanout,
            status: status.clone(),
            journal,
            confinement,
        };
        let carriers = start_s3_carriers(&plan, &wiring, pending)?;
        let mut router = TaskRouter::new(&plan.tasks, &carriers);
        if let Some(f) = &fleet {
            router = router.with_fleet(f.clone().recipient());
        }
        let router = router.start();
        let mut ingress = Vec::new();
        let mut clients = Vec::new();
        for (link, (inbox, held)) in links.into_iter().zip(inboxes) {
            let cfg = ingress_config(&plan, &link, inbox, held, &router, &status);
            ingress.push(<MqttIngress as Actor>::create(move |ctx| {
                MqttIngress::create(cfg, ctx)
            }));
            info!(carrier = %link.plan.name, broker = %link.plan.carrier.url,
                security = %mqtt::describe_tls(&link.plan.carrier), "MQTT carrier started");
            clients.push(link.client);
        }
        info!(system_id = %settings.system.id, "gator-ota started");
        Ok(Self {
            clients,
            _ingress: ingress,
            http,
            fleet,
        })
    }

    /// Stops the firmware server (downloads in flight get a few seconds),
    /// then leaves the brokers, giving in-flight acknowledgements a moment.
    pub async fn shutdown(self) {
        if let Some(http) = self.http {
            http.stop().await;
        }
        if let Some(fleet) = &self.fleet {
            let _ = fleet.send(Flush).await;
        }
        let leaving = self.clients.iter().filter(|c| c.is_connected()).map(|c| {
            let done = c.disconnect(None);
            async move {
                if tokio::time::timeout(Duration::from_secs(2), done)
                    .await
                    .is_err()
                {
                    warn!(broker = %c.server_uri(), "the broker did not acknowledge the disconnect in time");
                }
            }
        });
        futures::future::join_all(leaving).await;
    }
}

/// Names the main MQTT carrier (see [`MqttPlan::main`]) in the state folder,
/// or keeps the one it names: `inbox/` and `outbox/` hold that carrier's
/// messages, and a carrier added later must not be handed them.
fn keep_main_carrier(plan: &mut Plan, state: &Path) -> std::io::Result<()> {
    let marker = state.join("inbox").join(MAIN_CARRIER_FILE);
    let named = std::fs::read_to_string(&marker).ok();
    let named = named.as_deref().map(str::trim);
    match named {
        Some(name) if plan.mqtt.iter().any(|p| p.name == name) => {
            for p in &mut plan.mqtt {
                p.main = p.name == name;
            }
        }
        _ => {
            if let Some(old) = named {
                warn!(
                    carrier = old,
                    "the state folder's main MQTT carrier is no longer configured; another takes its inbox and outbox"
                );
            }
            let main = plan.mqtt.iter().find(|p| p.main).map(|p| p.name.clone());
            std::fs::create_dir_all(state.join("inbox"))?;
            std::fs::write(&marker, main.unwrap_or_default())?;
        }
    }
    Ok(())
}

/// In the main carrier's inbox folder, beside the `.msg` files.
const MAIN_CARRIER_FILE: &str = "carrier";

/// One MQTT carrier's client and egress, with the outbox a previous run
/// left.
fn start_link<'p>(plan: &Plan, p: &'p MqttPlan, state: &Path) -> Result<Link<'p>, StartError> {
    let client = mqtt::client(&p.name, &p.carrier)?;
    let (_, outbox_dir) = p.spool_dirs(state);
    let (outbox, held) = Spool::open(&outbox_dir).map_err(folder_err(&outbox_dir))?;
    let window = plan.settings.pipeline.outbox_window;
    let cfg = EgressConfig {
        client: client.clone(),
        routes: p.send_routes.clone(),
        qos: p.carrier.qos,
        outbox: Arc::new(outbox),
        held,
        window,
        mailbox: window,
    };
    Ok(Link {
        plan: p,
        client,
        egress: MqttEgress::new(cfg).start(),
    })
}

/// The firmware server, telling the counters and the device registry of
/// every image request and asking the registry for the fleet's endpoints.
fn start_http(
    plan: &Plan,
    confinement: &Confinement,
    journal: &Arc<Journal>,
    state: &Path,
    metrics: Arc<Metrics>,
    fleet: Option<&Addr<FleetActor>>,
    rollout: Option<Arc<Gate>>,
) -> Result<Option<FirmwareServer>, StartError> {
    let links = FleetLinks {
        rollout,
        tap: Tap {
            metrics,
            fleet: fleet.map(|f| f.clone().recipient()),
        },
        reports: fleet.map(|f| f.clone().recipient()),
    };
    let http = &plan.settings.http;
    Ok(FirmwareServer::start(
        http,
        confinement,
        journal.clone(),
        state,
        links,
    )?)
}

/// The staged rollouts, when `rollout.enabled` (which needs the fleet
/// view): the saved state is read here, blocking, at start-up.
fn rollout_gate(plan: &Plan, state: &Path) -> Option<Arc<Gate>> {
    let s = &plan.settings;
    (s.rollout.enabled && s.fleet.enabled).then(|| {
        let policy = crate::fleet::rollout::Policy::from_settings(&s.rollout);
        Gate::new(policy, crate::fleet::load_rollouts(state))
    })
}

/// The device registry's configuration, when `fleet.enabled`; its saved
/// state is read when the actor is made (blocking, at start-up), before any
/// device message can arrive.
fn start_fleet(
    plan: &Plan,
    links: &[Link],
    fanout: &Recipient<Publish>,
    journal: &Arc<Journal>,
    metrics: &Arc<Metrics>,
    confinement: &Confinement,
) -> Option<FleetConfig> {
    let settings = &plan.settings;
    if !settings.fleet.enabled {
        return None;
    }
    let pointers = settings
        .http
        .pointers
        .iter()
        .filter_map(|p| {
            let file = confinement
                .resolve("file", &p.file.to_string_lossy())
                .ok()?;
            Some((p.url.clone(), file.full()))
        })
        .collect();
    let sends = settings
        .send_addresses(gator_ota_settings::FLEET_STATUS)
        .next()
        .is_some();
    let cfg = FleetConfig {
        settings: settings.fleet.clone(),
        system_id: settings.system.id.clone(),
        state_dir: settings.system.data_dir.join(STATE_DIR),
        data_dir: settings.system.data_dir.clone(),
        reserve_bytes: settings.jobs.reserve_bytes,
        pointers,
        journal: journal.clone(),
        metrics: metrics.clone(),
        carriers: links
            .iter()
            .map(|l| (l.plan.name.clone(), l.client.clone()))
            .collect(),
        egress: sends.then(|| fanout.clone()),
        rollout: None,
    };
    Some(cfg)
}

/// Where jobs and statuses publish: every carrier's egress, by message type.
fn start_fanout(plan: &Plan, links: &[Link]) -> Recipient<Publish> {
    let routes = links
        .iter()
        .map(|l| Route {
            carrier: l.plan.name.as_str().into(),
            egress: l.egress.clone().recipient(),
            message_types: l.plan.send_routes.keys().cloned().collect(),
        })
        .collect();
    Fanout::new(routes, plan.settings.pipeline.outbox_window)
        .start()
        .recipient()
}

fn ingress_config(
    plan: &Plan,
    link: &Link,
    inbox: Spool,
    held: Vec<u64>,
    router: &Addr<TaskRouter>,
    status: &StatusSink,
) -> IngressConfig {
    let (settings, p) = (&plan.settings, link.plan);
    IngressConfig {
        carrier: p.name.as_str().into(),
        inbox_of: (!p.main).then(|| p.name.as_str().into()),
        client: link.client.clone(),
        connect: p.connect.clone(),
        subscriptions: p.subscriptions.clone(),
        specs: settings.messages.clone().into_iter().collect(),
        router: router.clone().recipient(),
        qos: p.carrier.qos,
        inbox: Arc::new(inbox),
        held,
        max_payload: settings.pipeline.max_payload_bytes,
        backlog_warning: settings.pipeline.inbox_warning,
        device_queue: settings.pipeline.device_queue,
        retry_min: p.carrier.reconnect_min,
        retry_max: p.carrier.reconnect_max,
        topic_map: p.topic_map.clone(),
        status: status.clone(),
        link: link.egress.clone().recipient(),
    }
}

/// What every S3 carrier's jobs share.
struct Wiring {
    writer: Addr<FsWriter>,
    egress: Recipient<Publish>,
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
        egress: wiring.egress.clone(),
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

/// Opens an inbox and returns the messages a previous run held but did not
/// hand on. A message whose job reached the journal just before a stop is
/// not taken a second time. `carrier` is how journal records name this
/// inbox (`None`: the main carrier's).
fn open_inbox(
    dir: &Path,
    pending: &[JobRecord],
    carrier: Option<&str>,
) -> std::io::Result<(Spool, Vec<u64>)> {
    let (inbox, held) = Spool::open(dir)?;
    let journaled: HashSet<u64> = pending
        .iter()
        .filter(|r| r.receipt_carrier.as_deref() == carrier)
        .filter_map(|r| r.receipt)
        .collect();
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
            inbox = %dir.display(),
            "the inbox holds messages from before the last stop; they are taken first"
        );
    }
    Ok((inbox, held))
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
            receipt_carrier: None,
        }
    }

    /// A job journaled from inbox entry 5 is still running when the service
    /// restarts with an empty inbox; the next message must not become entry
    /// 5, or a later start would drop it as that job's.
    #[test]
    fn new_inbox_entries_never_take_the_number_of_a_journaled_job() {
        let state = tempfile::tempdir().unwrap();
        let (inbox, held) = open_inbox(&state.path().join("inbox"), &[record(5)], None).unwrap();
        assert!(held.is_empty());
        let seq = inbox.put("t", b"new").unwrap();
        assert!(seq > 5, "new entry numbered {seq}");
        drop(inbox);
        let (_, held) = open_inbox(&state.path().join("inbox"), &[record(5)], None).unwrap();
        assert_eq!(held, vec![seq], "the new message is kept");
    }

    /// Two carriers' inboxes number their entries alike; a job journaled
    /// from the local carrier's entry 1 must not take the cloud's entry 1.
    #[test]
    fn a_journaled_receipt_names_its_own_carrier_s_inbox() {
        let state = tempfile::tempdir().unwrap();
        let (cloud, local) = (
            state.path().join("inbox"),
            state.path().join("carriers/local/inbox"),
        );
        let seq = Spool::open(&cloud).unwrap().0.put("t", b"cloud").unwrap();
        assert_eq!(
            Spool::open(&local).unwrap().0.put("t", b"local").unwrap(),
            seq
        );
        let mut from_local = record(seq);
        from_local.receipt_carrier = Some("local".into());
        let (_, held) = open_inbox(&local, &[from_local.clone()], Some("local")).unwrap();
        assert!(held.is_empty(), "the journaled entry is not taken again");
        let (_, held) = open_inbox(&cloud, &[from_local], None).unwrap();
        assert_eq!(held, vec![seq], "the cloud's entry is kept");
    }
}
