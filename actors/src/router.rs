//! The task router: SCARECRO's `on_message` tasks, as a table built once.
//!
//! Every envelope goes to each task configured `on_message` for its type.
//! The table is built from settings at start-up; a task whose carrier is not
//! running is a start-up error, never a surprise on the first message.

use std::collections::HashMap;
use std::sync::Arc;

use actix::{Actor, Context, Handler, Recipient, ResponseFuture, Supervised};
use gator_ota_settings::Settings;
use tracing::{debug, error};

use crate::messages::{Envelope, RunTask};

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("task `{task}` names carrier `{carrier}`, which is not running")]
    UnknownCarrier { task: String, carrier: String },
}

#[derive(Clone)]
struct Route {
    task: Arc<str>,
    function: Arc<str>,
    carrier: Recipient<RunTask>,
}

pub struct TaskRouter {
    routes: HashMap<String, Vec<Route>>,
}

impl TaskRouter {
    /// Builds the table from the settings' tasks and the running carriers.
    pub fn new(
        settings: &Settings,
        carriers: &HashMap<String, Recipient<RunTask>>,
    ) -> Result<Self, RouteError> {
        let mut routes: HashMap<String, Vec<Route>> = HashMap::new();
        for (name, task) in &settings.tasks {
            let carrier =
                carriers
                    .get(&task.config_name)
                    .ok_or_else(|| RouteError::UnknownCarrier {
                        task: name.clone(),
                        carrier: task.config_name.clone(),
                    })?;
            routes
                .entry(task.message_type.clone())
                .or_default()
                .push(Route {
                    task: name.as_str().into(),
                    function: task.function.as_str().into(),
                    carrier: carrier.clone(),
                });
        }
        Ok(Self { routes })
    }

    /// Message types some task consumes.
    pub fn message_types(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }
}

impl Actor for TaskRouter {
    type Context = Context<Self>;
}

impl Supervised for TaskRouter {}

impl Handler<Envelope> for TaskRouter {
    /// Resolves when every task has accepted the message, which carries a
    /// carrier's backpressure back to ingress.
    type Result = ResponseFuture<()>;

    fn handle(&mut self, envelope: Envelope, _: &mut Context<Self>) -> Self::Result {
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
