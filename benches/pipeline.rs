//! End-to-end benchmark: the worker binary against the local RabbitMQ and the Fastly simulator.
//!
//! Run it with `cargo bench --bench pipeline`. It measures, in one run:
//! 1. the broker ceiling: minimal lapin consumers, as many and with the same prefetch as the
//!    worker's, that publish one reply per message with confirms and ack it;
//! 2. the worker with default settings draining a backlog of one-key purge_keys jobs (10
//!    services, random keys, a quarter soft) from a simulator that replies in 20 ms;
//! 3. the worker at a steady rate of jobs, measuring latency from publish to result;
//! 4. 1, 2 and 4 worker processes draining one backlog together.
//!
//! It prints a JSON report and writes it, with a table, into docs/benchmarks.md. Sizes can be
//! lowered for a quick look: BENCH_BACKLOG (default 100000), BENCH_RATE (jobs/s, default 1000),
//! BENCH_STEADY_SECS (default 30), BENCH_SCALE_BACKLOG (default 50000). BENCH_PREFETCH
//! overrides the worker's prefetch in the backlog run, to see how memory and requests follow it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fastly_purge_worker::broker::QueueProbe;
use fastly_purge_worker::config::Settings;
use fastly_purge_worker::sim::{SimConfig, SimToken, Simulator};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};

const TOKEN: &str = "bench-token";
const SERVICES: usize = 10;
const SIM_LATENCY: Duration = Duration::from_millis(20);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test --benches` passes nothing and must not
    // run minutes of load.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("pipeline benchmark: run it with `cargo bench --bench pipeline`");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let backlog = env_number("BENCH_BACKLOG", 100_000) as usize;
    let rate = env_number("BENCH_RATE", 1000);
    let steady_secs = env_number("BENCH_STEADY_SECS", 30);
    let settings = worker_settings();
    let prefetch = settings.prefetch();
    let consumers = settings.broker.consumers;
    let linger_ms = settings.batch.linger_ms;
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ must run on AMQP_URL or 127.0.0.1:5672");
    let connection = Arc::new(connection);

    eprintln!(
        "1/3 broker ceiling: {backlog} messages, {consumers} consumers with a prefetch of {prefetch}"
    );
    let ceiling = broker_ceiling(&connection, backlog, prefetch, consumers).await;
    eprintln!("    {:.0} messages/s", ceiling.per_second);

    let sim = Simulator::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            tokens: vec![SimToken::global(TOKEN)],
            latency: SIM_LATENCY,
            purge_limit: u32::MAX,
            write_limit: u32::MAX,
            request_log_limit: 1000,
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();

    eprintln!("2/3 worker draining a backlog of {backlog} one-key jobs");
    let drained = backlog_run(&connection, &sim, backlog).await;
    eprintln!(
        "    {:.0} jobs/s, {:.2} requests per 1000 keys, peak RSS {:.1} MiB",
        drained.per_second, drained.requests_per_1000_keys, drained.peak_rss_mib
    );

    eprintln!(
        "3/3 worker at {rate} jobs/s for {steady_secs} s (default budgets, then unthrottled)"
    );
    let steady_default = steady_run(&connection, &sim, rate, steady_secs, &[]).await;
    let steady_open = steady_run(
        &connection,
        &sim,
        rate,
        steady_secs,
        &[
            ("FPW_LIMITS__PURGE__PER_HOUR", "100000000"),
            ("FPW_LIMITS__PURGE__BURST", "100000"),
        ],
    )
    .await;
    eprintln!(
        "    default budgets: p50 {} ms, p99 {} ms, max {} ms; unthrottled: p50 {} ms, p99 {} ms, max {} ms",
        steady_default.p50_ms,
        steady_default.p99_ms,
        steady_default.max_ms,
        steady_open.p50_ms,
        steady_open.p99_ms,
        steady_open.max_ms
    );

    let scale_backlog = env_number("BENCH_SCALE_BACKLOG", 50_000) as usize;
    let mut scaling = Vec::new();
    for workers in [1, 2, 4] {
        eprintln!("4/4 {workers} worker process(es) draining {scale_backlog} jobs");
        let rate = scaled_run(&connection, &sim, scale_backlog, workers).await;
        eprintln!("    {rate:.0} jobs/s");
        scaling.push(
            json!({"workers": workers, "jobs": scale_backlog, "jobs_per_second": rate.round()}),
        );
    }

    let report = json!({
        "machine": machine(),
        "settings": {"prefetch": prefetch, "consumers": consumers, "linger_ms": linger_ms, "simulator_latency_ms": SIM_LATENCY.as_millis() as u64,
                     "services": SERVICES, "soft_share": 0.25, "backlog_jobs": backlog, "steady_rate": rate, "steady_secs": steady_secs},
        "ceiling": ceiling.to_json(),
        "backlog": drained.to_json(ceiling.per_second),
        "steady_default_budgets": steady_default.to_json(),
        "steady_unthrottled": steady_open.to_json(),
        "scaling": scaling,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    write_report(&report);
    let _ = connection.close(200, "bench done".into()).await;
}

struct Ceiling {
    messages: usize,
    seconds: f64,
    per_second: f64,
}

impl Ceiling {
    fn to_json(&self) -> Value {
        json!({"messages": self.messages, "seconds": round(self.seconds), "messages_per_second": self.per_second.round()})
    }
}

/// Publishes `count` messages, then consumes them the way the worker does at the least: one
/// confirmed reply publish and one ack per message, on as many consumers (each with a reply
/// channel of its own) and with the same prefetch as the worker.
async fn broker_ceiling(
    connection: &Connection,
    count: usize,
    prefetch: u16,
    consumers: u16,
) -> Ceiling {
    let input = format!("bench.ceiling.{}", short_id());
    let output = format!("{input}.out");
    let channel = connection.create_channel().await.unwrap();
    for queue in [&input, &output] {
        declare_quorum(&channel, queue).await;
    }
    publish_many(&channel, &input, count, |index| {
        serde_json::to_vec(
            &json!({"type": "purge_keys", "service_id": "S1", "keys": [format!("k{index}")]}),
        )
        .unwrap()
    })
    .await;

    // A reply the size of a real result, so the broker moves as many bytes as for the worker.
    let reply: Arc<[u8]> = serde_json::to_vec(&json!({
        "job_id": "job-12345", "type": "purge_keys", "status": "succeeded", "account": "default",
        "attempts": 1, "redelivered": false, "received_at": "2026-12-04T20:30:00.120Z",
        "finished_at": "2026-12-04T20:30:00.161Z",
        "output": {"service_id": "BenchService3", "soft": false, "purge_ids": {"key-8f3a9c1e2b4d6f70": "4151-1796411400-1"}},
        "error": null
    }))
    .unwrap()
    .into();
    let done = Arc::new(tokio::sync::Semaphore::new(0));
    let mut channels = Vec::new();
    let mut lanes = Vec::new();
    for lane in 0..consumers.max(1) {
        let consumer_channel = connection.create_channel().await.unwrap();
        consumer_channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .unwrap();
        let reply_channel = connection.create_channel().await.unwrap();
        reply_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let consumer = consumer_channel
            .basic_consume(
                input.as_str().into(),
                format!("ceiling-{lane}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channels.push(consumer_channel);
        lanes.push((consumer, reply_channel));
    }

    let started = Instant::now();
    for (mut consumer, reply_channel) in lanes {
        let output = output.clone();
        let done = Arc::clone(&done);
        let reply = Arc::clone(&reply);
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let reply_channel = reply_channel.clone();
                let output = output.clone();
                let done = Arc::clone(&done);
                let reply = Arc::clone(&reply);
                tokio::spawn(async move {
                    let properties = BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into());
                    let confirm = reply_channel
                        .basic_publish(
                            "".into(),
                            output.as_str().into(),
                            BasicPublishOptions::default(),
                            &reply,
                            properties,
                        )
                        .await
                        .unwrap();
                    confirm.await.unwrap();
                    delivery.ack(BasicAckOptions::default()).await.unwrap();
                    done.add_permits(1);
                });
            }
        });
    }
    let _ = done.acquire_many(count as u32).await.unwrap();
    let seconds = started.elapsed().as_secs_f64();
    for consumer_channel in channels {
        let _ = consumer_channel.close(200, "ceiling done".into()).await;
    }
    for queue in [&input, &output] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    Ceiling {
        messages: count,
        seconds,
        per_second: count as f64 / seconds,
    }
}

struct Drained {
    jobs: usize,
    seconds: f64,
    per_second: f64,
    requests: u64,
    requests_per_1000_keys: f64,
    peak_rss_mib: f64,
    cpu_seconds_per_10k: f64,
}

impl Drained {
    fn to_json(&self, ceiling: f64) -> Value {
        json!({
            "jobs": self.jobs, "seconds": round(self.seconds), "jobs_per_second": self.per_second.round(),
            "ratio_to_ceiling": round(self.per_second / ceiling),
            "fastly_requests": self.requests, "requests_per_1000_keys": round(self.requests_per_1000_keys),
            "ideal_requests_per_1000_keys": round(1000.0 / 256.0),
            "peak_rss_mib": round(self.peak_rss_mib), "cpu_seconds_per_10000_jobs": round(self.cpu_seconds_per_10k),
        })
    }
}

/// Fills the jobs queue, then starts the worker and times it until every result is in.
async fn backlog_run(connection: &Arc<Connection>, sim: &Simulator, count: usize) -> Drained {
    let prefix = format!("bench.backlog.{}", short_id());
    let settings = queue_settings(&prefix);
    declare_worker_queues(&settings).await;
    let channel = connection.create_channel().await.unwrap();
    publish_many(&channel, &settings.broker.jobs_queue, count, |index| {
        serde_json::to_vec(&random_job(index)).unwrap()
    })
    .await;
    sim.reset();

    let prefetch = std::env::var("BENCH_PREFETCH").unwrap_or_default();
    let env: Vec<(&str, &str)> = if prefetch.is_empty() {
        Vec::new()
    } else {
        vec![("FPW_BROKER__PREFETCH", prefetch.as_str())]
    };
    let mut worker = start_worker(sim, &prefix, &env);
    let started = Instant::now();
    // Counting by queue depth adds no consumer, so the broker does the same work as for the
    // ceiling. The results are read after the clock stops.
    wait_for_depth(connection, &settings.broker.results_queue, count).await;
    let seconds = started.elapsed().as_secs_f64();
    let (peak_rss_mib, cpu_seconds) = process_usage(worker.id());
    stop_worker(&mut worker);
    let received = count_results(connection, &settings.broker.results_queue, count).await;
    assert_eq!(received.len(), count, "every job must get a result");

    let stats = sim.stats();
    let requests = stats.purges;
    delete_worker_queues(connection, &settings).await;
    Drained {
        jobs: count,
        seconds,
        per_second: count as f64 / seconds,
        requests,
        requests_per_1000_keys: requests as f64 * 1000.0 / count as f64,
        peak_rss_mib,
        cpu_seconds_per_10k: cpu_seconds * 10_000.0 / count as f64,
    }
}

/// Fills the jobs queue, starts `workers` worker processes on it, and returns jobs per second
/// until every result is in.
async fn scaled_run(
    connection: &Arc<Connection>,
    sim: &Simulator,
    count: usize,
    workers: usize,
) -> f64 {
    let prefix = format!("bench.scale.{}", short_id());
    let settings = queue_settings(&prefix);
    declare_worker_queues(&settings).await;
    let channel = connection.create_channel().await.unwrap();
    publish_many(&channel, &settings.broker.jobs_queue, count, |index| {
        serde_json::to_vec(&random_job(index)).unwrap()
    })
    .await;
    sim.reset();
    let started = Instant::now();
    let mut children: Vec<Worker> = (0..workers)
        .map(|_| start_worker(sim, &prefix, &[]))
        .collect();
    wait_for_depth(connection, &settings.broker.results_queue, count).await;
    let seconds = started.elapsed().as_secs_f64();
    for child in &mut children {
        stop_worker(child);
    }
    delete_worker_queues(connection, &settings).await;
    count as f64 / seconds
}

struct Steady {
    jobs: usize,
    p50_ms: u64,
    p99_ms: u64,
    max_ms: u64,
    requests: u64,
    peak_rss_mib: f64,
}

impl Steady {
    fn to_json(&self) -> Value {
        json!({"jobs": self.jobs, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "max_ms": self.max_ms,
               "fastly_requests": self.requests, "peak_rss_mib": round(self.peak_rss_mib)})
    }
}

/// Publishes jobs at `rate` per second to a running worker and measures publish-to-result
/// latency of each.
async fn steady_run(
    connection: &Connection,
    sim: &Simulator,
    rate: u64,
    seconds: u64,
    env: &[(&str, &str)],
) -> Steady {
    let prefix = format!("bench.steady.{}", short_id());
    let settings = queue_settings(&prefix);
    declare_worker_queues(&settings).await;
    sim.reset();
    let mut worker = start_worker(sim, &prefix, env);
    let total = (rate * seconds) as usize;

    let published: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let collector = {
        let connection_url = amqp_url();
        let results_queue = settings.broker.results_queue.clone();
        let published = Arc::clone(&published);
        tokio::spawn(async move {
            let connection = Connection::connect(&connection_url, ConnectionProperties::default())
                .await
                .unwrap();
            let results = count_results(&connection, &results_queue, total).await;
            let published = published.lock().unwrap();
            let mut latencies: Vec<u64> = results
                .iter()
                .filter_map(|(id, at)| {
                    published
                        .get(id)
                        .map(|sent| at.duration_since(*sent).as_millis() as u64)
                })
                .collect();
            latencies.sort_unstable();
            latencies
        })
    };

    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // Ten jobs every 10 ms at 1,000 jobs/s.
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1) as usize;
    let mut interval = tokio::time::interval(tick);
    let mut sent = 0;
    while sent < total {
        interval.tick().await;
        for _ in 0..per_tick.min(total - sent) {
            let job = random_job(sent);
            let id = job["id"].as_str().unwrap().to_owned();
            published.lock().unwrap().insert(id, Instant::now());
            channel
                .basic_publish(
                    "".into(),
                    settings.broker.jobs_queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &serde_json::to_vec(&job).unwrap(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap();
            sent += 1;
        }
    }
    let latencies = collector.await.unwrap();
    let (peak_rss_mib, _) = process_usage(worker.id());
    stop_worker(&mut worker);
    let requests = sim.stats().purges;
    delete_worker_queues(connection, &settings).await;
    let percentile = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    Steady {
        jobs: latencies.len(),
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        max_ms: *latencies.last().unwrap(),
        requests,
        peak_rss_mib,
    }
}

/// Builds a one-key purge_keys job on one of ten services, soft one time in four.
fn random_job(index: usize) -> Value {
    let service = format!("BenchService{}", index % SERVICES);
    let key = format!("key-{:016x}", rand::random::<u64>());
    json!({"id": format!("job-{index}"), "type": "purge_keys", "service_id": service, "keys": [key], "soft": rand::random_ratio(1, 4)})
}

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

fn queue_settings(prefix: &str) -> Settings {
    let mut settings = Settings::defaults();
    settings.broker.url = amqp_url();
    settings.broker.jobs_queue = format!("{prefix}.jobs");
    settings.broker.results_queue = format!("{prefix}.results");
    settings.broker.dead_letter_queue = format!("{prefix}.dead");
    settings.broker.retry_queue = format!("{prefix}.retry");
    settings
}

async fn declare_worker_queues(settings: &Settings) {
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
    let _ = connection.close(200, "declared".into()).await;
}

async fn delete_worker_queues(connection: &Connection, settings: &Settings) {
    let channel = connection.create_channel().await.unwrap();
    let mut queues = vec![
        settings.broker.jobs_queue.clone(),
        settings.broker.results_queue.clone(),
        settings.broker.dead_letter_queue.clone(),
    ];
    queues.extend(settings.retry_queues());
    for queue in queues {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

async fn declare_quorum(channel: &Channel, queue: &str) {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .unwrap();
}

/// Publishes `count` persistent messages with confirms, a thousand at a time.
async fn publish_many(
    channel: &Channel,
    queue: &str,
    count: usize,
    body: impl Fn(usize) -> Vec<u8>,
) {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for index in 0..count {
        // The confirm is awaited in bulk below, not per message.
        drop(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &body(index),
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into()),
                )
                .await
                .unwrap(),
        );
        if index % 1000 == 999 {
            channel.wait_for_confirms().await.unwrap();
        }
    }
    channel.wait_for_confirms().await.unwrap();
}

/// Waits until `queue` contains `count` messages, polling its depth every 20 ms.
async fn wait_for_depth(connection: &Arc<Connection>, queue: &str, count: usize) {
    let probe = QueueProbe::open(connection.clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(900);
    while Instant::now() < deadline {
        if probe.status(queue).await.unwrap().messages as usize >= count {
            probe.close().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    probe.close().await;
    eprintln!("    the results did not all arrive within 900 s");
}

/// Consumes `count` results and returns each job id with its arrival time.
async fn count_results(
    connection: &Connection,
    queue: &str,
    count: usize,
) -> Vec<(String, Instant)> {
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(1000, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "bench-results".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut results = Vec::with_capacity(count);
    let deadline = Instant::now() + Duration::from_secs(900);
    while results.len() < count && Instant::now() < deadline {
        let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_secs(60), consumer.next()).await
        else {
            eprintln!(
                "    no result for 60 s; {} of {count} arrived",
                results.len()
            );
            break;
        };
        let delivery = delivery.unwrap();
        let at = Instant::now();
        let result: Value = serde_json::from_slice(&delivery.data).unwrap();
        if result["status"] != "succeeded" {
            eprintln!("    job did not succeed: {result}");
        }
        results.push((result["job_id"].as_str().unwrap_or_default().to_owned(), at));
    }
    let _ = channel.close(200, "counted".into()).await;
    results
}

/// Returns the settings of the backlog run's worker: the defaults, the `FPW_` variables it
/// inherits from this environment, and `BENCH_PREFETCH`. The report and the ceiling use them.
fn worker_settings() -> Settings {
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    if let Ok(prefetch) = std::env::var("BENCH_PREFETCH")
        && !prefetch.is_empty()
    {
        vars.push(("FPW_BROKER__PREFETCH".to_owned(), prefetch));
    }
    Settings::load_with_env(None, vars).expect("the FPW_ variables and BENCH_PREFETCH are valid")
}

/// Starts the release worker binary on the queues of `prefix`, with `env` on top of the
/// defaults, and waits until it consumes jobs.
fn start_worker(sim: &Simulator, prefix: &str, env: &[(&str, &str)]) -> Worker {
    // BENCH_WORKER_WRAPPER runs the worker under a profiler, such as valgrind's massif.
    let wrapper = std::env::var("BENCH_WORKER_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut command = match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command
                .args(words)
                .arg(env!("CARGO_BIN_EXE_fastly-purge-worker"));
            command
        }
        None => Command::new(env!("CARGO_BIN_EXE_fastly-purge-worker")),
    };

    command
        .arg("run")
        .env("AMQP_URL", amqp_url())
        .env("FASTLY_API_URL", sim.base_url())
        .env("FASTLY_API_TOKEN", TOKEN)
        .env("FPW_BROKER__JOBS_QUEUE", format!("{prefix}.jobs"))
        .env("FPW_BROKER__RESULTS_QUEUE", format!("{prefix}.results"))
        .env("FPW_BROKER__DEAD_LETTER_QUEUE", format!("{prefix}.dead"))
        .env("FPW_BROKER__RETRY_QUEUE", format!("{prefix}.retry"))
        .env("FPW_TELEMETRY__LISTEN", "127.0.0.1:0")
        .env(
            "RUST_LOG",
            std::env::var("BENCH_WORKER_LOG")
                .unwrap_or_else(|_| "warn,fastly_purge_worker::worker=info".to_owned()),
        )
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }

    let mut worker = Worker(command.spawn().expect("the worker binary starts"));
    let stderr = worker.0.stderr.take().unwrap();
    let (ready, ready_seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("consuming jobs") {
                let _ = ready.send(());
            } else if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("    worker: {line}");
            }
        }
    });

    // The worker drops when this panics, so it does not keep consuming the bench queues.
    ready_seen.recv_timeout(Duration::from_secs(60)).expect(
        "the worker logs \"consuming jobs\" within 60 s; \
         a BENCH_WORKER_LOG must keep fastly_purge_worker::worker at info",
    );
    worker
}

/// A worker child process, killed when dropped, so a failed run leaves none behind.
struct Worker(Child);

impl Worker {
    fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn stop_worker(worker: &mut Worker) {
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let _ = worker.0.wait();
}

/// Reads a process's peak resident memory (MiB) and CPU time (seconds) from /proc.
fn process_usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_kib: f64 = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (in parentheses): utime and stime are fields 14 and 15.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    // Linux reports CPU time in clock ticks of 1/100 s on every common configuration.
    (peak_kib / 1024.0, ticks / 100.0)
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find(|line| line.starts_with("MemTotal:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map(|kib| round(kib / 1024.0 / 1024.0))
        .unwrap_or(0.0);
    let rabbitmq = Command::new("rabbitmqctl")
        .args(["version"])
        .output()
        .ok()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory_gib": memory_gib,
        "rabbitmq": rabbitmq,
        "date": chrono::Utc::now().format("%Y-%m-%d").to_string(),
    })
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// Formats a JSON number as a whole number.
fn whole(value: &Value) -> u64 {
    value.as_f64().unwrap_or(0.0).round() as u64
}

/// Replaces the generated part of docs/benchmarks.md, between its markers, with this run.
fn write_report(report: &Value) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/benchmarks.md");
    let Ok(page) = std::fs::read_to_string(path) else {
        eprintln!("docs/benchmarks.md not found; the report above is not saved");
        return;
    };
    let (start, end) = ("<!-- pipeline:start -->", "<!-- pipeline:end -->");
    let (Some(from), Some(to)) = (page.find(start), page.find(end)) else {
        eprintln!("docs/benchmarks.md has no pipeline markers; the report above is not saved");
        return;
    };
    let c = &report["ceiling"];
    let b = &report["backlog"];
    let d = &report["steady_default_budgets"];
    let o = &report["steady_unthrottled"];
    let m = &report["machine"];
    let table = format!(
        "\nLast run {date} on {cpu} ({cores} cores, {mem} GiB), RabbitMQ {rmq}.\n\n\
| measure | value |\n|---|---|\n\
| broker ceiling | {c_rate} messages/s |\n\
| worker, backlog of {jobs} jobs | {b_rate} jobs/s ({ratio} of the ceiling) |\n\
| Fastly requests per 1,000 keys (backlog) | {rq} (ideal {ideal}) |\n\
| peak RSS (backlog) | {rss} MiB |\n\
| CPU seconds per 10,000 jobs (backlog) | {cpu_s} |\n\
| steady {rate} jobs/s, default budgets: p50 / p99 / max | {dp50} / {dp99} / {dmax} ms |\n\
| steady {rate} jobs/s, purge budget unthrottled: p50 / p99 / max | {op50} / {op99} / {omax} ms |\n\
| 1 / 2 / 4 worker processes, backlog of {scale_jobs} jobs | {s1} / {s2} / {s4} jobs/s |\n\n\
```json\n{json}\n```\n",
        date = m["date"].as_str().unwrap_or_default(),
        cpu = m["cpu"].as_str().unwrap_or_default(),
        cores = m["cores"],
        mem = m["memory_gib"],
        rmq = m["rabbitmq"].as_str().unwrap_or_default(),
        c_rate = whole(&c["messages_per_second"]),
        jobs = b["jobs"],
        b_rate = whole(&b["jobs_per_second"]),
        ratio = b["ratio_to_ceiling"],
        rq = b["requests_per_1000_keys"],
        ideal = b["ideal_requests_per_1000_keys"],
        rss = b["peak_rss_mib"],
        cpu_s = b["cpu_seconds_per_10000_jobs"],
        rate = report["settings"]["steady_rate"],
        dp50 = d["p50_ms"],
        dp99 = d["p99_ms"],
        dmax = d["max_ms"],
        op50 = o["p50_ms"],
        op99 = o["p99_ms"],
        omax = o["max_ms"],
        scale_jobs = report["scaling"][0]["jobs"],
        s1 = whole(&report["scaling"][0]["jobs_per_second"]),
        s2 = whole(&report["scaling"][1]["jobs_per_second"]),
        s4 = whole(&report["scaling"][2]["jobs_per_second"]),
        json = serde_json::to_string_pretty(report).unwrap(),
    );
    let updated = format!("{}{start}{table}{}", &page[..from], &page[to..]);
    std::fs::write(path, updated).unwrap();
    eprintln!("wrote docs/benchmarks.md");
}
