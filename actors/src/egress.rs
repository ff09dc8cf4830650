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
use tracing::{info, warn};

use crate::messages::Publish;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("no send address carries message type {0:?}")]
    NoAddress(String),
    #[error("cannot encode the message: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the broker refused the message on {topic}: {source}")]
    Refused {
        topic: String,
        #[source]
        source: paho::Error,
    },
}

pub struct MqttEgress {
    client: paho::AsyncClient,
    /// message type → topics of the send addresses carrying it.
    routes: HashMap<String, Vec<String>>,
    qos: i32,
    /// How long to wait for the broker before leaving delivery to the client.
    ack_timeout: Duration,
}

impl MqttEgress {
    pub fn new(client: paho::AsyncClient, routes: HashMap<String, Vec<String>>, qos: i32) -> Self {
        Self {
            client,
            routes,
            qos,
            ack_timeout: Duration::from_secs(10),
        }
    }
}

impl Actor for MqttEgress {
    type Context = Context<Self>;
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
                return Err(PublishError::NoAddress(msg.message_type));
            }
            let payload = serde_json::to_vec(&msg.content)?;
            for topic in topics {
                let token = client.publish(paho::Message::new(&topic, payload.clone(), qos));
                match tokio::time::timeout(ack_timeout, token).await {
                    Ok(Ok(())) => info!(%topic, message_type = %msg.message_type, "published"),
                    Ok(Err(source)) => return Err(PublishError::Refused { topic, source }),
                    Err(_) => warn!(
                        %topic,
                        message_type = %msg.message_type,
                        "broker has not acknowledged yet; the client keeps the message and delivers it after reconnecting"
                    ),
                }
            }
            Ok(())
        })
    }
}
