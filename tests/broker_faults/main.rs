//! Fault tests that stop, restart or cut the local broker, crash the worker, or load it under
//! Fastly chaos. They share one broker with nothing else, so they run one at a time (see
//! [`serial`]) in a test target of their own, and every test leaves the broker running.

// The helpers are shared with the main test target; this one uses only part of them.
#[allow(dead_code)]
#[path = "../it/process.rs"]
mod process;
#[allow(dead_code)]
#[path = "../it/world.rs"]
mod world;

mod chaos;
mod crash;
mod reconnect;
mod sharing;

use std::process::Command;
use std::time::{Duration, Instant};

use fastly_purge_worker::config::Settings;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, Consumer};
use serde_json::Value;
use tokio::sync::{Mutex, MutexGuard};

/// Holds the broker for one test at a time, even when the harness runs tests in parallel.
/// An async mutex, because each test holds it across its awaits, in runtimes of their own.
pub async fn serial() -> MutexGuard<'static, ()> {
    static BROKER: Mutex<()> = Mutex::const_new(());
    BROKER.lock().await
}

/// Runs `rabbitmqctl` with arguments and returns its standard output; panics if it fails.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs; these tests need the local broker's control tool");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Starts the broker application if it is stopped and waits until it accepts connections.
pub fn ensure_broker_running() {
    let _ = Command::new("rabbitmqctl").arg("start_app").output();
    rabbitmqctl(&["await_startup", "--timeout", "60"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect("127.0.0.1:5672").is_err() {
        assert!(Instant::now() < deadline, "the broker did not listen again");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Restarts the broker application when dropped, so a failing test leaves it running.
pub struct BrokerGuard;

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        ensure_broker_running();
    }
}

/// A guard that deletes a test's queues when dropped, so a test that fails midway does not
/// leave its backlog on the broker.
pub struct QueuesGuard(pub String);

impl Drop for QueuesGuard {
    fn drop(&mut self) {
        process::delete_queues(&self.0);
    }
}

/// Waits until `condition` holds, checking every 20 ms, or panics after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Declares the worker's queues of `settings` before any worker runs.
pub async fn declare_queues(settings: &Settings) {
    let connection = fastly_purge_worker::broker::connect(&settings.broker)
        .await
        .unwrap();
    fastly_purge_worker::broker::declare_topology(
        &connection,
        &settings.broker,
        &settings.retry_queues(),
    )
    .await
    .unwrap();
}

/// Publishes each job body to `queue` as a persistent message and waits for the confirms.
pub async fn publish_jobs(connection: &Connection, queue: &str, jobs: impl Iterator<Item = Value>) {
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for body in jobs {
        // The confirms are awaited all at once below, so each single one is dropped.
        drop(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &serde_json::to_vec(&body).unwrap(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap(),
        );
    }
    channel.wait_for_confirms().await.unwrap();
}

/// Consumes the results queue without acks, under consumer tag `tag`.
pub async fn consume_results(connection: &Connection, queue: &str, tag: &str) -> Consumer {
    connection
        .create_channel()
        .await
        .unwrap()
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
}
