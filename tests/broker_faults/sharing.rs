//! Several worker processes on one queue share each Fastly budget: together they stay within
//! the account's write limit, each does a fair part of the work, and when one dies the others
//! finish its jobs.

use std::collections::HashSet;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use fastly_purge_worker::broker::queue_status;
use fastly_purge_worker::sim::{SimConfig, SimToken, Simulator};
use futures_util::StreamExt;
use lapin::{Connection, ConnectionProperties};
use serde_json::{Value, json};

use crate::process::{WorkerProcess, command, with_queues};
use crate::world::{amqp_url, metric, test_settings, unique_prefix};
use crate::{QueuesGuard, consume_results, declare_queues, publish_jobs};

const JOBS: usize = 30_000;
/// purge_all jobs among them, each on a service of its own, so each is one write.
const WRITES: usize = 150;
const TOKEN: &str = "sharing-token";
/// The simulator's write limit: 20 writes per 2 s window, 10 a second.
const WRITE_LIMIT: u32 = 20;
const WINDOW: Duration = Duration::from_secs(2);
/// Consumer channels per worker.
const CONSUMERS: u32 = 4;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a worker whose configured write budget is the whole account's: 10 a second.
fn worker(prefix: &str, sim: &Simulator, port: u16) -> WorkerProcess {
    let mut run = command(&["run"]);
    with_queues(&mut run, prefix);
    run.env("FASTLY_API_TOKEN", TOKEN)
        .env("FASTLY_API_URL", sim.base_url())
        .env("FPW_TELEMETRY__LISTEN", format!("127.0.0.1:{port}"))
        .env("FPW_BROKER__CONSUMERS", CONSUMERS.to_string())
        .env("FPW_TELEMETRY__QUEUE_POLL_INTERVAL_MS", "200")
        .env("FPW_LIMITS__WRITE__PER_HOUR", "36000")
        .env("FPW_LIMITS__WRITE__BURST", "6")
        .env("FPW_BATCH__LINGER_MS", "20")
        .env("FPW_REDELIVERY__MAX_DEFERRALS", "1000")
        .env("FPW_REDELIVERY__DELAYS_MS", "200")
        .env("RUST_LOG", "warn,fastly_purge_worker::worker=info");
    WorkerProcess::start(run)
}

async fn completed(port: u16) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric(&text, "fastly_purge_worker_jobs_completed_total", &[])
}

/// Fills the jobs queue: one-key purges on ten services, and purge_all jobs spread among them.
async fn publish_backlog(connection: &Connection, jobs_queue: &str) {
    let every = JOBS / WRITES;
    let jobs = (0..JOBS).map(|job| {
        if job % every == 0 {
            json!({"id": format!("job-{job}"), "type": "purge_all", "service_id": format!("Write{job}")})
        } else {
            json!({"id": format!("job-{job}"), "type": "purge_keys",
                   "service_id": format!("Service{}", job % 10), "keys": [format!("key-{job}")]})
        }
    });
    publish_jobs(connection, jobs_queue, jobs).await;
}

struct Run {
    prefix: String,
    sim: Simulator,
    connection: Connection,
    results: lapin::Consumer,
    answered: HashSet<String>,
    /// Deletes the queues also when a check fails midway. A test declares its workers after
    /// its `Run`, so they are killed before the queues go.
    _queues: QueuesGuard,
}

impl Run {
    /// Starts the simulator with the account's write limit, declares the queues and starts
    /// reading results. The test starts the workers and publishes the backlog.
    async fn prepare(test: &str) -> Run {
        let prefix = unique_prefix(test);
        let queues = QueuesGuard(prefix.clone());
        let settings = test_settings(&prefix);
        let sim = Simulator::start(
            "127.0.0.1:0".parse().unwrap(),
            SimConfig {
                tokens: vec![SimToken::global(TOKEN)],
                latency: Duration::from_millis(5),
                purge_limit: u32::MAX,
                write_limit: WRITE_LIMIT,
                window: WINDOW,
                request_log_limit: 1000,
                ..SimConfig::default()
            },
        )
        .await
        .unwrap();

        declare_queues(&settings).await;
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let results = consume_results(
            &connection,
            &settings.broker.results_queue,
            "sharing-results",
        )
        .await;

        Run {
            prefix,
            sim,
            connection,
            results,
            answered: HashSet::new(),
            _queues: queues,
        }
    }

    fn jobs_queue(&self) -> String {
        test_settings(&self.prefix).broker.jobs_queue
    }

    async fn publish_backlog(&self) {
        publish_backlog(&self.connection, &self.jobs_queue()).await;
    }

    /// Waits until the jobs queue has `count` consumers.
    async fn wait_for_consumers(&self, count: u32) {
        let settings = test_settings(&self.prefix);
        let queues = [settings.broker.jobs_queue.clone()];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = queue_status(&self.connection, &settings.broker, &queues)
                .await
                .unwrap();
            if status[0].consumers >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the jobs queue has {} consumers, not {count}",
                status[0].consumers
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Reads results until `count` distinct jobs have one; each must have succeeded.
    async fn collect_until(&mut self, count: usize, deadline: Instant) {
        while self.answered.len() < count {
            assert!(
                Instant::now() < deadline,
                "only {} of {JOBS} jobs answered in time",
                self.answered.len()
            );
            let delivery = tokio::time::timeout(Duration::from_secs(60), self.results.next())
                .await
                .expect("results keep coming")
                .unwrap()
                .unwrap();
            let result: Value = serde_json::from_slice(&delivery.data).unwrap();
            assert_eq!(result["status"], "succeeded", "{result}");
            self.answered
                .insert(result["job_id"].as_str().unwrap().to_owned());
        }
    }

    fn assert_write_limit_kept(&self) {
        let stats = self.sim.stats();
        eprintln!(
            "write requests: at most {} in one window, {} answered 429",
            stats.max_write_requests_in_window, stats.rate_limited
        );
        assert!(
            stats.max_write_requests_in_window <= WRITE_LIMIT,
            "{} write requests in one window, over the limit of {WRITE_LIMIT}",
            stats.max_write_requests_in_window
        );
        assert_eq!(stats.rate_limited, 0, "replies with status 429");
    }

    async fn finish(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_the_write_budget() {
    let _broker = crate::serial().await;
    let mut run = Run::prepare("sharing").await;
    let ports = [free_port(), free_port(), free_port()];
    let workers: Vec<WorkerProcess> = ports
        .iter()
        .map(|port| worker(&run.prefix, &run.sim, *port))
        .collect();
    // The backlog arrives once every worker consumes, as a bulk publish would reach a running
    // deployment. Published earlier, it would go mostly to whichever worker connected first,
    // and the split would measure process start times, not sharing.
    run.wait_for_consumers(3 * CONSUMERS).await;
    run.publish_backlog().await;

    run.collect_until(JOBS, Instant::now() + Duration::from_secs(240))
        .await;
    for port in ports {
        let done = completed(port).await;
        eprintln!("the worker on port {port} completed {done} jobs");
        assert!(
            done >= (JOBS / 5) as f64,
            "a worker did {done} of {JOBS} jobs, less than a fifth"
        );
    }
    run.assert_write_limit_kept();
    for worker in workers {
        let (status, logs) = worker.terminate();
        assert!(status.success(), "{logs}");
    }
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surviving_workers_finish_a_killed_ones_jobs() {
    let _broker = crate::serial().await;
    let mut run = Run::prepare("sharing_kill").await;
    run.publish_backlog().await;
    let mut workers: Vec<WorkerProcess> = (0..3)
        .map(|_| worker(&run.prefix, &run.sim, free_port()))
        .collect();

    let deadline = Instant::now() + Duration::from_secs(240);
    run.collect_until(JOBS / 2, deadline).await;
    drop(workers.remove(0)); // SIGKILL halfway: its unacked deliveries return to the queue.
    run.collect_until(JOBS, deadline).await;
    run.assert_write_limit_kept();
    for worker in workers {
        let (status, logs) = worker.terminate();
        assert!(status.success(), "{logs}");
    }
    run.finish().await;
}
