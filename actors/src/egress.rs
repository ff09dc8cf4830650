//! MQTT egress: sends messages such as confirm_receipt on their addresses.
//!
//! The route table (message type → topics) is fixed at start-up from the
//! send addresses. A publish made while the broker is away is kept by the
//! client and delivered after it reconnects; egress waits a bounded time for
//! the broker's acknowledgement so a firmware job is never held hostage by an
//! outage.

use std::collections::HashMap;
use std::time::Duration;

use actix::{Actor, Context, Handler, ResponseFuture, Supervised};
use paho_mqtt as paho;
use tracing::{debug, warn};

use crate::messages::Publish;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot encode the message: {0}")]
    Encode(#[from] serde_json::Error),
}

pub struct MqttEgress {
    client: paho::AsyncClient,
    /// message type → topics of the send addresses carrying it.
    routes: HashMap<String, Vec<String>>,
    qos: i32,
    /// How long to wait for the broker before leaving delivery to the client.
    ack_timeout: Duration,
    /// Mailbox capacity (`pipeline.mqtt_buffer`).
    mailbox: usize,
}

impl MqttEgress {
    pub fn new(
        client: paho::AsyncClient,
        routes: HashMap<String, Vec<String>>,
        qos: i32,
        mailbox: usize,
    ) -> Self {
        Self {
            client,
            routes,
            qos,
            ack_timeout: Duration::from_secs(10),
            mailbox,
        }
    }
}

impl Actor for MqttEgress {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Status messages are offered with `try_send`; a burst of jobs must
        // not find the default 16-slot mailbox full.
        ctx.set_mailbox_capacity(self.mailbox);
    }
}

impl Supervised for MqttEgress {}

impl Handler<Publish> for MqttEgress {
    type Result = ResponseFuture<Result<(), PublishError>>;

    fn handle(&mut self, msg: Publish, _: &mut Context<Self>) -> Self::Result {
        let client = self.client.clone();
        let topics = self
            .routes
            .get(&msg.message_type)
            .cloned()
            .unwrap_or_default();
        let qos = self.qos;
        let ack_timeout = self.ack_timeout;
        Box::pin(async move {
            if topics.is_empty() {
                // Optional messages (firmware_status) are off without an address.
                debug!(message_type = %msg.message_type, "no send address carries this message type");
                return Ok(());
            }
            let payload = serde_json::to_vec(&msg.content)?;
            for topic in topics {
                // Queued by the client (kept on disk while the broker is
                // away); the acknowledgement is awaited off the job's path.
                let token = client.publish(paho::Message::new(&topic, payload.clone(), qos));
                let message_type = msg.message_type.clone();
                actix::spawn(async move {
                    match tokio::time::timeout(ack_timeout, token).await {
                        Ok(Ok(())) => debug!(%topic, %message_type, "published"),
                        Ok(Err(e)) => {
                            warn!(%topic, %message_type, error = %e, "the broker did not take the message; the client retries after reconnecting")
                        }
                        Err(_) => {
                            warn!(%topic, %message_type, "broker has not acknowledged yet; the client keeps the message and delivers it after reconnecting")
                        }
                    }
                });
            }
            Ok(())
        })
    }
}
