//! The gator-ota firmware pipeline, one actor per stage.
//!
//! A `firmware_image` travels:
//!
//! 1. [`ingress`] — MQTT ingress: payload → SCARECRO [`messages::Envelope`].
//! 2. [`router`] — task router: envelope → every `on_message` task for its type.
//! 3. [`s3_carrier`] — the S3 carrier's `handle_new_firmware_message`: checks
//!    and confines the message ([`firmware`], [`paths`]), journals it
//!    ([`journal`]) and runs the job ([`job`]): resume, retry, verify, with
//!    what S3's response headers add ([`s3_response`]).
//! 4. [`writer`] — filesystem writer: staging, then image and pointer, each
//!    atomically.
//! 5. [`egress`] — MQTT egress: `confirm_receipt` and [`status`] messages.
//! 6. [`http`] — the firmware server the Data Gators fetch pointers and
//!    installed images from.
//!
//! Beside the flow, [`fleet`] keeps the registry of Data Gators (fed by
//! their MQTT messages and the firmware server's record) and the rollout
//! view the status endpoints show; [`metrics`] counts what happened.
//!
//! Stages hold `Recipient`s of the next stage, never concrete actors.
//! [`plan`] derives everything from settings (for `run` and `check-config`
//! alike) and [`service`] starts the actors from the plan;
//! [`scarecro_topics`] maps received topics to addresses the way SCARECRO does
//! when the settings come from a SCARECRO folder.

pub(crate) mod durable;
pub(crate) mod egress;
pub mod firmware;
pub mod fleet;
pub(crate) mod hashes;
pub(crate) mod http;
pub(crate) mod ingress;
pub(crate) mod job;
pub(crate) mod journal;
pub(crate) mod messages;
pub(crate) mod metrics;
pub mod mqtt;
pub mod paths;
pub(crate) mod plan;
pub(crate) mod router;
pub(crate) mod s3_carrier;
pub(crate) mod s3_response;
pub(crate) mod scarecro_topics;
pub(crate) mod service;
pub mod signature;
pub(crate) mod spool;
pub(crate) mod staging;
pub(crate) mod status;
pub mod time;
pub(crate) mod writer;

pub use plan::{Plan, PlanError};
pub use service::{Service, StartError};
