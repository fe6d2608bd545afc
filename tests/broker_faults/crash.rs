//! A crash (SIGKILL) with batches in flight, then a restart: every job still gets a succeeded
//! result, and every key reaches Fastly at least once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use fastly_purge_worker::sim::{SimConfig, SimToken, Simulator};
use futures_util::StreamExt;
use lapin::{Connection, ConnectionProperties};
use serde_json::{Value, json};

use crate::process::{WorkerProcess, command, with_queues};
use crate::world::{amqp_url, test_settings, unique_prefix};
use crate::{QueuesGuard, consume_results, declare_queues, publish_jobs, serial};

const JOBS: usize = 20_000;
const SERVICES: usize = 10;
const TOKEN: &str = "crash-token";

fn worker(prefix: &str, sim: &Simulator) -> WorkerProcess {
    let mut run = command(&["run"]);
    with_queues(&mut run, prefix);
    run.env("FASTLY_API_TOKEN", TOKEN)
        .env("FASTLY_API_URL", sim.base_url())
        .env("FPW_BATCH__LINGER_MS", "50");
    WorkerProcess::start(run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_then_restart_loses_nothing() {
    let _broker = serial().await;
    let prefix = unique_prefix("crash");
    let _queues = QueuesGuard(prefix.clone());
    let settings = test_settings(&prefix);
    let sim = Simulator::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            tokens: vec![SimToken::global(TOKEN)],
            latency: Duration::from_millis(20),
            purge_limit: u32::MAX,
            request_log_limit: 1000,
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();

    // Declare the queues and fill the jobs queue before any worker runs.
    declare_queues(&settings).await;
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let jobs = (0..JOBS).map(|job| {
        json!({"id": format!("job-{job}"), "type": "purge_keys",
            "service_id": format!("Service{}", job % SERVICES), "keys": [format!("key-{job}")]})
    });
    publish_jobs(&connection, &settings.broker.jobs_queue, jobs).await;

    // Collect results as they come, across both workers.
    let mut results =
        consume_results(&connection, &settings.broker.results_queue, "crash-results").await;
    let mut succeeded: HashSet<String> = HashSet::new();
    let mut redelivered = 0;

    let first = worker(&prefix, &sim);
    // Kill it in the middle of the run, with deliveries unacked and batches in flight.
    let deadline = Instant::now() + Duration::from_secs(120);
    while succeeded.len() < JOBS / 4 {
        assert!(
            Instant::now() < deadline,
            "the first worker made no progress"
        );
        let delivery = tokio::time::timeout(Duration::from_secs(30), results.next())
            .await
            .expect("results keep coming")
            .unwrap()
            .unwrap();
        let result: Value = serde_json::from_slice(&delivery.data).unwrap();
        assert_eq!(result["status"], "succeeded", "{result}");
        succeeded.insert(result["job_id"].as_str().unwrap().to_owned());
    }
    drop(first); // SIGKILL: the child is killed without a chance to clean up.

    let second = worker(&prefix, &sim);
    while succeeded.len() < JOBS {
        assert!(
            Instant::now() < deadline,
            "only {} of {JOBS} jobs got a result",
            succeeded.len()
        );
        let delivery = tokio::time::timeout(Duration::from_secs(30), results.next())
            .await
            .expect("results keep coming after the restart")
            .unwrap()
            .unwrap();
        let result: Value = serde_json::from_slice(&delivery.data).unwrap();
        assert_eq!(result["status"], "succeeded", "{result}");
        if result["redelivered"] == true {
            redelivered += 1;
        }
        succeeded.insert(result["job_id"].as_str().unwrap().to_owned());
    }
    assert!(
        redelivered > 0,
        "jobs unacked at the crash come back redelivered"
    );

    for service in 0..SERVICES {
        let purged = sim.purged_keys(&format!("Service{service}"));
        for job in (service..JOBS).step_by(SERVICES) {
            assert!(
                purged.contains(&format!("key-{job}")),
                "key-{job} never reached Fastly"
            );
        }
    }
    let (status, logs) = second.terminate();
    assert!(status.success(), "{logs}");
    let _ = connection.close(200, "done".into()).await;
}
