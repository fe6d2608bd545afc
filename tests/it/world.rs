//! The test world: a simulator on a free port, unique queues on the real broker, a worker
//! started in-process, and a client that publishes jobs and reads results and dead letters.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fastly_purge_worker::broker::QueueProbe;
use fastly_purge_worker::config::{Account, Config, QueueType, Settings};
use fastly_purge_worker::job::JobResult;
use fastly_purge_worker::sim::{SimConfig, SimToken, Simulator};
use fastly_purge_worker::worker::{self, WorkerHandle};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use secrecy::SecretString;
use serde_json::Value;

/// How long a test waits for one result before it fails.
pub const RESULT_TIMEOUT: Duration = Duration::from_secs(15);

/// The token of the default account in every world.
pub const TOKEN: &str = "test-token-default";

/// Returns the AMQP URL of the broker the tests use: `AMQP_URL` when set, else the local
/// broker on 127.0.0.1:5672 when it accepts connections, else a container (feature `testcontainers`).
pub fn amqp_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("AMQP_URL") {
            return url;
        }
        if TcpStream::connect_timeout(&"127.0.0.1:5672".parse().unwrap(), Duration::from_secs(1))
            .is_ok()
        {
            return "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned();
        }
        container_url()
    })
    .clone()
}

/// Starts RabbitMQ in a container. It needs a Docker engine, which machines with a local
/// broker (such as the development machines of this project) do not have or need.
#[cfg(feature = "testcontainers")]
fn container_url() -> String {
    use testcontainers_modules::rabbitmq::RabbitMq;
    use testcontainers_modules::testcontainers::runners::SyncRunner;

    static CONTAINER: OnceLock<testcontainers_modules::testcontainers::Container<RabbitMq>> =
        OnceLock::new();
    let container = CONTAINER.get_or_init(|| {
        RabbitMq::default()
            .start()
            .expect("cannot start a RabbitMQ container; is Docker running?")
    });
    let port = container
        .get_host_port_ipv4(5672)
        .expect("the RabbitMQ container exposes port 5672");
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

#[cfg(not(feature = "testcontainers"))]
fn container_url() -> String {
    panic!(
        "no RabbitMQ broker: set AMQP_URL, start RabbitMQ on 127.0.0.1:5672 \
         (rabbitmq-server -detached), or run the tests with --features testcontainers on a \
         machine with Docker"
    )
}

/// Settings for a test: unique queue names, short timeouts and delays.
pub fn test_settings(prefix: &str) -> Settings {
    let mut settings = Settings::defaults();
    settings.broker.url = amqp_url();
    settings.broker.jobs_queue = format!("{prefix}.jobs");
    settings.broker.results_queue = format!("{prefix}.results");
    settings.broker.dead_letter_queue = format!("{prefix}.dead");
    settings.broker.retry_queue = format!("{prefix}.retry");
    settings.broker.queue_type = QueueType::Classic;
    settings.broker.publish_timeout_ms = 2000;
    settings.fastly.request_timeout_ms = 2000;
    settings.fastly.retry.min_delay_ms = 5;
    settings.fastly.retry.max_delay_ms = 20;
    settings.fastly.retry.max_attempts = 4;
    settings.worker.shutdown_timeout_ms = 3000;
    settings.batch.linger_ms = 10;
    // Every in-process worker gets a port of its own.
    settings.telemetry.listen = "127.0.0.1:0".to_owned();
    settings.telemetry.queue_poll_interval_ms = 100;
    settings.redelivery.delivery_budget_ms = 10_000;
    settings.redelivery.max_attempts = 2;
    settings.redelivery.max_deferrals = 3;
    settings.redelivery.delays_ms = vec![20, 40];
    settings
}

/// Returns a queue-name prefix unique to one test.
pub fn unique_prefix(test: &str) -> String {
    format!(
        "test.{test}.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Builds a world, letting a test change the simulator, the settings and the accounts.
pub struct WorldBuilder {
    pub prefix: String,
    pub sim: SimConfig,
    pub settings: Settings,
    /// Account name to token; the default account uses [`TOKEN`].
    pub accounts: BTreeMap<String, String>,
}

impl WorldBuilder {
    pub fn new(test: &str) -> WorldBuilder {
        let prefix = unique_prefix(test);
        let settings = test_settings(&prefix);
        WorldBuilder {
            prefix,
            sim: SimConfig {
                tokens: vec![SimToken::global(TOKEN)],
                ..SimConfig::default()
            },
            settings,
            accounts: BTreeMap::from([("default".to_owned(), TOKEN.to_owned())]),
        }
    }

    /// Adds an account whose token has only `scopes`.
    pub fn account(mut self, name: &str, scopes: &[&str]) -> WorldBuilder {
        let token = format!("test-token-{name}");
        self.sim.tokens.push(SimToken::with_scopes(&token, scopes));
        self.accounts.insert(name.to_owned(), token);
        self
    }

    pub async fn start(self) -> World {
        let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), self.sim)
            .await
            .unwrap();
        let api_url = url::Url::parse(&sim.base_url()).unwrap();
        let accounts = self
            .accounts
            .iter()
            .map(|(name, token)| {
                let account = Account::new(name, SecretString::from(token.clone())).unwrap();
                (name.clone(), account)
            })
            .collect();
        let config = Config {
            settings: self.settings.clone(),
            api_url,
            accounts,
        };
        let worker = worker::start(config.clone()).await.unwrap();
        let client = Client::connect(&self.settings).await;
        World {
            sim,
            settings: self.settings,
            config,
            worker: Some(worker),
            client,
            finished: false,
        }
    }
}

/// A running test world.
pub struct World {
    pub sim: Simulator,
    pub settings: Settings,
    /// The worker's configuration, to start another worker on the same queues.
    pub config: Config,
    pub worker: Option<WorkerHandle>,
    pub client: Client,
    /// False until [`World::finish`] ran; a world dropped before, by a failing test, still
    /// deletes its queues.
    finished: bool,
}

impl Drop for World {
    fn drop(&mut self) {
        if !self.finished {
            crate::process::delete_named_queues(worker_queue_names(&self.settings));
        }
    }
}

impl World {
    pub async fn start(test: &str) -> World {
        WorldBuilder::new(test).start().await
    }

    /// Publishes a job with a reply_to and returns its correlation id.
    pub async fn send(&self, job: Value) -> String {
        self.client.send(&job).await
    }

    /// Publishes a job and returns its result.
    pub async fn run(&mut self, job: Value) -> Reply {
        let correlation = self.send(job).await;
        self.client.reply_for(&correlation).await
    }

    /// Reads up to `count` messages from the dead-letter queue, waiting for them to arrive.
    pub async fn dead_letters(&self, count: usize) -> Vec<lapin::message::Delivery> {
        self.client
            .get_messages(&self.settings.broker.dead_letter_queue, count)
            .await
    }

    /// Reads up to `count` messages from the results queue.
    pub async fn results_queue(&self, count: usize) -> Vec<lapin::message::Delivery> {
        self.client
            .get_messages(&self.settings.broker.results_queue, count)
            .await
    }

    /// Starts a worker again on the same queues and simulator, after [`World::stop_and_count`].
    pub async fn restart_worker(&mut self) {
        assert!(self.worker.is_none(), "stop the running worker first");
        self.worker = Some(worker::start(self.config.clone()).await.unwrap());
    }

    /// Stops the worker, so every delivery is settled, and counts the messages left in the
    /// jobs and dead-letter queues.
    pub async fn stop_and_count(&mut self) -> QueueCounts {
        if let Some(worker) = self.worker.take() {
            worker.shutdown().await.unwrap();
        }
        let broker = &self.settings.broker;
        QueueCounts {
            jobs: self.client.depth(&broker.jobs_queue).await,
            dead: self.client.depth(&broker.dead_letter_queue).await,
        }
    }

    /// Stops the worker and deletes the world's queues.
    pub async fn finish(mut self) {
        self.finished = true;
        if let Some(worker) = self.worker.take() {
            worker.shutdown().await.unwrap();
        }
        delete_worker_queues(&self.client.channel, &self.settings).await;
        let _ = self.client.connection.close(200, "test done".into()).await;
        // The simulator stops when the world is dropped.
    }
}

/// Returns the names of the jobs, results, dead-letter and delay queues of `settings`.
pub fn worker_queue_names(settings: &Settings) -> Vec<String> {
    let broker = &settings.broker;
    let mut queues = vec![
        broker.jobs_queue.clone(),
        broker.results_queue.clone(),
        broker.dead_letter_queue.clone(),
    ];
    queues.extend(settings.retry_queues());
    queues
}

/// Deletes the worker queues of its settings when dropped, so a test that fails leaves none.
pub struct QueueCleanup(Vec<String>);

impl QueueCleanup {
    pub fn new(settings: &Settings) -> QueueCleanup {
        QueueCleanup(worker_queue_names(settings))
    }
}

impl Drop for QueueCleanup {
    fn drop(&mut self) {
        crate::process::delete_named_queues(std::mem::take(&mut self.0));
    }
}

/// Deletes the jobs, results, dead-letter and delay queues of `settings`, with any messages.
pub async fn delete_worker_queues(channel: &Channel, settings: &Settings) {
    for queue in &worker_queue_names(settings) {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

/// Messages left in the world's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    pub jobs: u32,
    pub dead: u32,
}

/// A result message with its AMQP properties.
#[derive(Debug)]
pub struct Reply {
    pub result: JobResult,
    pub json: Value,
    pub properties: BasicProperties,
}

/// The test's own broker client: publishes jobs, consumes its private reply queue.
pub struct Client {
    pub connection: Arc<Connection>,
    pub channel: Channel,
    probe: QueueProbe,
    pub jobs_queue: String,
    pub reply_queue: String,
    replies: Consumer,
    /// Replies that arrived while the test waited for another one.
    early: Vec<Reply>,
}

impl Client {
    pub async fn connect(settings: &Settings) -> Client {
        let connection = Connection::connect(&settings.broker.url, ConnectionProperties::default())
            .await
            .unwrap();
        let connection = Arc::new(connection);
        let probe = QueueProbe::open(connection.clone()).await.unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let replies = channel
            .basic_consume(
                queue.name().clone(),
                "test-replies".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Client {
            connection,
            channel,
            probe,
            jobs_queue: settings.broker.jobs_queue.clone(),
            reply_queue: queue.name().as_str().to_owned(),
            replies,
            early: Vec::new(),
        }
    }

    /// Publishes a JSON job with reply_to set to the private queue; returns the correlation id.
    pub async fn send(&self, job: &Value) -> String {
        let correlation = uuid::Uuid::new_v4().to_string();
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(correlation.as_str().into());
        self.publish(&serde_json::to_vec(job).unwrap(), properties)
            .await;
        correlation
    }

    /// Publishes raw bytes with the given properties to the jobs queue and waits for the confirm.
    pub async fn publish(&self, body: &[u8], properties: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.jobs_queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "the broker did not confirm the job");
    }

    /// Returns the properties of a raw message whose result goes to the private queue.
    pub fn reply_properties(&self, correlation: &str) -> BasicProperties {
        BasicProperties::default()
            .with_reply_to(self.reply_queue.as_str().into())
            .with_correlation_id(correlation.into())
    }

    /// Waits for the reply with this correlation id.
    pub async fn reply_for(&mut self, correlation: &str) -> Reply {
        if let Some(index) = self
            .early
            .iter()
            .position(|reply| correlation_of(reply) == Some(correlation))
        {
            return self.early.remove(index);
        }
        let deadline = tokio::time::Instant::now() + RESULT_TIMEOUT;
        loop {
            let delivery = tokio::time::timeout_at(deadline, self.replies.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("no result for correlation id {correlation} within {RESULT_TIMEOUT:?}")
                })
                .expect("the reply consumer ended")
                .unwrap();
            let reply = Reply {
                result: serde_json::from_slice(&delivery.data).unwrap_or_else(|err| {
                    panic!(
                        "the result does not match the contract ({err}): {}",
                        String::from_utf8_lossy(&delivery.data)
                    )
                }),
                json: serde_json::from_slice(&delivery.data).unwrap(),
                properties: delivery.properties,
            };
            if correlation_of(&reply) == Some(correlation) {
                return reply;
            }
            self.early.push(reply);
        }
    }

    /// Returns the number of messages ready in a queue.
    pub async fn depth(&self, queue: &str) -> u32 {
        self.probe.status(queue).await.unwrap().messages
    }

    /// Reads up to `count` messages from a queue with basic.get (acking them), waiting up to
    /// the result timeout for them to arrive.
    pub async fn get_messages(&self, queue: &str, count: usize) -> Vec<lapin::message::Delivery> {
        let deadline = tokio::time::Instant::now() + RESULT_TIMEOUT;
        let mut messages = Vec::new();
        while messages.len() < count && tokio::time::Instant::now() < deadline {
            match self
                .channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                Some(message) => messages.push(message.delivery),
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        messages
    }
}

fn correlation_of(reply: &Reply) -> Option<&str> {
    reply
        .properties
        .correlation_id()
        .as_ref()
        .map(|id| id.as_str())
}

/// Scrapes the metrics until `ready` holds for them, for at most two seconds, and returns the
/// last scrape. A job's counters move after its delivery is acked, which can be a moment after
/// its result arrives.
pub async fn scrape_until(worker: &WorkerHandle, ready: impl Fn(&str) -> bool) -> String {
    let mut text = scrape(worker).await;
    for _ in 0..100 {
        if ready(&text) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = scrape(worker).await;
    }
    text
}

/// Scrapes a worker's metrics endpoint once.
pub async fn scrape(worker: &WorkerHandle) -> String {
    let addr = worker
        .telemetry_addr()
        .expect("the test worker serves metrics");
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Returns the value of a series in a Prometheus text exposition: the line of `name` whose
/// labels include every `label="value"` pair given; 0 when there is none.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")))
        })
        .map(|(_, value)| value.parse::<f64>().unwrap())
        .sum()
}

/// Reads a string header of a message.
pub fn header(delivery: &lapin::message::Delivery, name: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        lapin::types::AMQPValue::LongString(text) => {
            Some(String::from_utf8_lossy(text.as_bytes()).into_owned())
        }
        lapin::types::AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        other => Some(format!("{other:?}")),
    }
}
