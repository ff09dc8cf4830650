//! More than one MQTT carrier: a SCARECRO gateway's local broker (the Data
//! Gators) beside the cloud's (firmware_image, confirms), each a connection
//! of its own with its own inbox and outbox.

mod common;

use common::*;

const LOCAL_STATUS: &str = "gateway/firmware_status";
const LOCAL_RECEIVE: &str = "local/firmware_image";

/// The default MQTT carrier's table under the name `local`, pointed at
/// `broker`, with a send address for statuses and a receive address for
/// firmware_image on it.
fn local_carrier_settings(world: &World, local: &Broker) -> std::path::PathBuf {
    let local_table = local_carrier_table(local);
    let file = world.dir.path().join("two-brokers.toml");
    std::fs::write(
        &file,
        format!(
            "{local_table}\n\
             [addresses.local_status]\ncarrier = \"local\"\nsend_or_receive = \"send\"\n\
             message_type = [\"firmware_status\"]\nduration = \"on_message\"\ntopic = \"{LOCAL_STATUS}\"\n\
             [addresses.local_receive]\ncarrier = \"local\"\nsend_or_receive = \"receive\"\n\
             message_type = [\"firmware_image\"]\nduration = \"always\"\ntopic = \"{LOCAL_RECEIVE}\"\n"
        ),
    )
    .unwrap();
    file
}

fn two_broker_gateway(world: &World, local: &Broker) -> Gateway {
    let mut env = world.env();
    let file = local_carrier_settings(world, local);
    env.push((
        "GATOR_OTA_SETTINGS".into(),
        file.to_str().unwrap().to_string(),
    ));
    Gateway::start(env)
}

#[test]
fn each_mqtt_carrier_is_a_connection_of_its_own() {
    let world = World::new();
    let mut local = Broker::start();
    world.s3.put_random_object(BUCKET, "fw/a.bin", 40_000, 1);
    world.s3.put_random_object(BUCKET, "fw/b.bin", 40_000, 2);
    world.s3.put_random_object(BUCKET, "fw/c.bin", 40_000, 3);
    // A gateway that ran with the cloud's carrier alone: the queues in the
    // state folder are that carrier's, and stay so when a carrier is added,
    // even one whose name sorts first.
    let before = world.gateway();
    before.wait_log("subscribed");
    before.terminate();
    let gw = two_broker_gateway(&world, &local);
    gw.wait_count("subscribed", 2);
    let confirms = world.confirms();
    let statuses = Subscriber::new(&local.url(), LOCAL_STATUS);

    // From the cloud: confirmed to the cloud, statuses on the local broker.
    world.publish_json(&firmware_image("from-cloud", "a", "fw/a.bin"));
    let c = confirms
        .recv_json(DEADLINE)
        .expect("a confirm on the cloud broker");
    assert_eq!(c["file_name"], "a");
    let seen = statuses_until_done(&statuses, "from-cloud");
    assert_eq!(seen.last().unwrap()["status"], "INSTALLED", "{seen:?}");

    // From the local broker: the job runs and is confirmed to the cloud,
    // the only carrier with a confirm_receipt address.
    publish(
        &local.url(),
        LOCAL_RECEIVE,
        &firmware_image("from-local", "b", "fw/b.bin").to_string(),
    );
    let c = confirms
        .recv_json(DEADLINE)
        .expect("a confirm for the local job");
    assert_eq!(c["file_name"], "b");
    let state = world.data_dir().join(".gator-ota");
    assert!(state.join("carriers/local/inbox").is_dir());
    assert!(state.join("carriers/local/outbox").is_dir());

    // The local broker gone: the cloud's connection goes on alone.
    local.terminate();
    gw.wait_log("lost the broker connection");
    world.publish_json(&firmware_image("cloud-alone", "c", "fw/c.bin"));
    let c = confirms.recv_json(DEADLINE).unwrap_or_else(|| {
        panic!(
            "a confirm while the local broker is down; log:\n{}",
            gw.log()
        )
    });
    assert_eq!(c["file_name"], "c");
    assert!(gw.log().contains("carrier=local"), "{}", gw.log());
}

#[test]
fn check_config_shows_every_mqtt_carrier() {
    let world = World::new();
    let local = Broker::start();
    let file = local_carrier_settings(&world, &local);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gator-ota"))
        .args(["check-config", "--settings", file.to_str().unwrap()])
        .env_remove("GATOR_OTA_SETTINGS")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[carriers.local]"), "{stdout}");
    assert!(stdout.contains("[carriers.mqtt]"), "{stdout}");
    assert!(stdout.contains(&local.url()), "{stdout}");
}

/// The local broker restarts under every job while the cloud's stays up:
/// the local connection's troubles (its statuses waiting in its outbox, its
/// reconnects) never hold a cloud job back, every job is confirmed once,
/// and the local connection comes back and takes jobs again.
#[test]
fn a_flapping_local_broker_never_holds_the_cloud_back() {
    let world = World::new();
    let mut local = Broker::start();
    const JOBS: usize = 6;
    for i in 0..JOBS {
        let key = format!("fw/flap-{i}.bin");
        world.s3.put_random_object(BUCKET, &key, 30_000, i as u64);
    }
    world
        .s3
        .put_random_object(BUCKET, "fw/after.bin", 30_000, 99);
    let gw = two_broker_gateway(&world, &local);
    gw.wait_count("subscribed", 2);
    let confirms = world.confirms();
    let mut seen = Vec::new();
    for i in 0..JOBS {
        let name = format!("flap-{i}");
        world.publish_json(&firmware_image(&name, &name, &format!("fw/flap-{i}.bin")));
        // The local broker goes away and comes back while the job runs and
        // its statuses are due there.
        local.restart();
        let c = confirms.recv_json(DEADLINE).unwrap_or_else(|| {
            panic!(
                "no confirm for {name} while the local broker flapped; log:\n{}",
                gw.log()
            )
        });
        seen.push(c["file_name"].as_str().unwrap().to_string());
    }
    // The local connection comes back by itself and takes a job again. The
    // job is retained, so it reaches the gateway whenever it subscribes
    // again, however many restarts that took.
    let statuses = Subscriber::new(&local.url(), LOCAL_STATUS);
    let job = firmware_image("after", "after", "fw/after.bin").to_string();
    let client = paho_mqtt::Client::new(local.url()).unwrap();
    client.connect(None).unwrap();
    let retained = paho_mqtt::MessageBuilder::new()
        .topic(LOCAL_RECEIVE)
        .payload(job)
        .qos(1)
        .retained(true)
        .finalize();
    client.publish(retained).unwrap();
    let c = confirms.recv_json(DEADLINE).unwrap_or_else(|| {
        panic!(
            "no confirm for the local job after the flaps; log:\n{}",
            gw.log()
        )
    });
    seen.push(c["file_name"].as_str().unwrap().to_string());
    let done = statuses_until_done(&statuses, "after");
    assert_eq!(done.last().unwrap()["status"], "INSTALLED", "{done:?}");
    let mut want: Vec<String> = (0..JOBS).map(|i| format!("flap-{i}")).collect();
    want.push("after".into());
    seen.sort();
    want.sort();
    assert_eq!(seen, want, "every job confirmed once");
    assert!(gw.is_running());
}
