//! The task router: SCARECRO's `on_message` tasks, as a table built once.
//!
//! Every envelope goes to each task configured `on_message` for its type.
//! The table is built once, from the plan ([`crate::plan`]), which refuses
//! a task whose carrier is not an S3 carrier before anything starts.
//! The Data Gators' own message types go to the fleet registry instead
//! ([`crate::fleet`]), when it runs.

use std::collections::HashMap;
use std::sync::Arc;

use actix::{Actor, Context, Handler, Recipient, ResponseFuture};
use tracing::{debug, error};

use crate::messages::{Envelope, RunTask};
use crate::plan::TaskPlan;

#[derive(Clone)]
struct Route {
    task: Arc<str>,
    function: Arc<str>,
    carrier: Recipient<RunTask>,
}

pub struct TaskRouter {
    routes: HashMap<String, Vec<Route>>,
    /// The device registry, for `datagator_*` messages.
    fleet: Option<Recipient<Envelope>>,
}

impl TaskRouter {
    /// Builds the table from the plan's tasks and the running carriers. The
    /// plan starts a carrier for every task, so none is missing; a task
    /// whose carrier is absent anyway is left out, with an error logged.
    pub(crate) fn new(tasks: &[TaskPlan], carriers: &HashMap<String, Recipient<RunTask>>) -> Self {
        let mut routes: HashMap<String, Vec<Route>> = HashMap::new();
        for task in tasks {
            let Some(carrier) = carriers.get(&task.carrier) else {
                error!(task = %task.name, carrier = %task.carrier, "the task's carrier is not running");
                continue;
            };
            routes
                .entry(task.message_type.clone())
                .or_default()
                .push(Route {
                    task: task.name.as_str().into(),
                    function: task.function.as_str().into(),
                    carrier: carrier.clone(),
                });
        }
        Self {
            routes,
            fleet: None,
        }
    }

    /// Sends the Data Gators' messages to the device registry.
    pub fn with_fleet(mut self, fleet: Recipient<Envelope>) -> Self {
        self.fleet = Some(fleet);
        self
    }
}

impl Actor for TaskRouter {
    type Context = Context<Self>;
}

impl Handler<Envelope> for TaskRouter {
    /// Resolves when every task has accepted the message, which carries a
    /// carrier's backpressure back to ingress.
    type Result = ResponseFuture<()>;

    fn handle(&mut self, envelope: Envelope, _: &mut Context<Self>) -> Self::Result {
        let for_fleet = gator_ota_settings::DEVICE_MESSAGE_TYPES
            .contains(&envelope.msg_type.as_str())
            || envelope.msg_type == gator_ota_settings::ROLLOUT;
        if for_fleet && let Some(fleet) = self.fleet.clone() {
            return Box::pin(async move {
                if let Err(e) = fleet.send(envelope).await {
                    error!(error = %e, "the device registry did not take a device message");
                }
            });
        }
        let routes = self
            .routes
            .get(&envelope.msg_type)
            .cloned()
            .unwrap_or_default();
        Box::pin(async move {
            if routes.is_empty() {
                debug!(msg_id = %envelope.msg_id, msg_type = %envelope.msg_type, "no task runs on this message type");
            }
            for route in routes {
                let run = RunTask {
                    task: route.task.clone(),
                    function: route.function,
                    envelope: envelope.clone(),
                };
                if let Err(e) = route.carrier.send(run).await {
                    error!(msg_id = %envelope.msg_id, task = %route.task, error = %e, "carrier did not take the task");
                }
            }
        })
    }
}
