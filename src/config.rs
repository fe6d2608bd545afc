//! Settings: the typed configuration, its layers (built-in defaults, an optional file, the
//! environment), validation, and the Fastly API tokens of each account, wrapped as secrets.
//!
//! Nothing here talks to the broker or to Fastly. A token leaves this module only through
//! [`Account::expose_token`], which the Fastly client turns into the `Fastly-Key` header.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

/// The built-in defaults, with a comment on every setting.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of environment variables that override settings, as in `FPW_BROKER__PREFETCH`.
pub const ENV_PREFIX: &str = "FPW";
/// Separator between section and key in those variables.
pub const ENV_SEPARATOR: &str = "__";
/// Name of the account a job uses when it names none.
pub const DEFAULT_ACCOUNT: &str = "default";

/// A configuration problem, worded for the operator who has to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration: {0}")]
    Load(config::ConfigError),
    #[error("invalid setting {key} = {value:?}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
    #[error("account {account:?}: {reason}")]
    Account { account: String, reason: String },
    #[error(
        "no Fastly API token is configured: set FASTLY_API_TOKEN, configure an account in \
         [accounts], or pass --simulate to use the built-in Fastly simulator"
    )]
    NoToken,
}

impl From<config::ConfigError> for ConfigError {
    fn from(err: config::ConfigError) -> ConfigError {
        ConfigError::Load(err)
    }
}

/// Every setting, as deserialized from the layers. See config/default.toml for their meaning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub broker: BrokerSettings,
    pub fastly: FastlySettings,
    pub batch: BatchSettings,
    pub limits: LimitSettings,
    pub redelivery: RedeliverySettings,
    pub jobs: JobLimits,
    pub worker: WorkerSettings,
    pub telemetry: TelemetrySettings,
    pub log: LogSettings,
    pub accounts: BTreeMap<String, AccountSource>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    /// AMQP URL; it may contain a password, so Debug shows it redacted.
    pub url: String,
    pub connection_name: String,
    pub jobs_queue: String,
    pub results_queue: String,
    pub dead_letter_queue: String,
    pub retry_queue: String,
    pub queue_type: QueueType,
    pub delivery_limit: u32,
    /// None derives it from the batch size and the in-flight cap; see [`Settings::prefetch`].
    pub prefetch: Option<u16>,
    pub consumers: u16,
    pub publish_timeout_ms: u64,
    pub bindings: Vec<Binding>,
}

impl fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("url", &redact_url(&self.url))
            .field("connection_name", &self.connection_name)
            .field("jobs_queue", &self.jobs_queue)
            .field("results_queue", &self.results_queue)
            .field("dead_letter_queue", &self.dead_letter_queue)
            .field("retry_queue", &self.retry_queue)
            .field("queue_type", &self.queue_type)
            .field("delivery_limit", &self.delivery_limit)
            .field("prefetch", &self.prefetch)
            .field("consumers", &self.consumers)
            .field("publish_timeout_ms", &self.publish_timeout_ms)
            .field("bindings", &self.bindings)
            .finish()
    }
}

impl BrokerSettings {
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }

    /// Returns the AMQP URL with its password replaced, for logs and messages.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// RabbitMQ queue type of the worker's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Quorum,
    Classic,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// A binding of the jobs queue to an exchange.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    pub exchange: String,
    #[serde(default = "default_exchange_type")]
    pub exchange_type: String,
    #[serde(default)]
    pub routing_key: String,
}

fn default_exchange_type() -> String {
    "topic".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FastlySettings {
    pub api_url: String,
    pub request_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub retry: RetrySettings,
}

impl FastlySettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    pub max_attempts: u32,
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
}

/// Coalescing of surrogate-key purges into bulk requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSettings {
    pub linger_ms: u64,
    pub backlog_linger_ms: u64,
    pub max_keys: usize,
}

impl BatchSettings {
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }

    pub fn backlog_linger(&self) -> Duration {
        Duration::from_millis(self.backlog_linger_ms.max(self.linger_ms))
    }
}

/// Rate budgets per account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub max_in_flight: u32,
    pub purge: QuotaSettings,
    pub write: QuotaSettings,
    pub read: QuotaSettings,
}

/// A limiter's quota: requests per hour on average, and at most `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSettings {
    pub per_hour: u32,
    pub burst: u32,
}

/// Retries through the broker's delay queues.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedeliverySettings {
    pub delivery_budget_ms: u64,
    pub max_attempts: u32,
    pub max_deferrals: u32,
    #[serde(deserialize_with = "one_or_many")]
    pub delays_ms: Vec<u64>,
}

/// Reads a list of numbers, or a single number as a list of one: an environment variable
/// without a comma arrives as a plain number, and values from the environment may be text.
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Value(u64),
        Text(String),
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Number),
        Many(Vec<Number>),
    }
    let numbers = match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(number) => vec![number],
        OneOrMany::Many(numbers) => numbers,
    };
    numbers
        .into_iter()
        .map(|number| match number {
            Number::Value(value) => Ok(value),
            Number::Text(text) => text.trim().parse::<u64>().map_err(|_| {
                serde::de::Error::custom(format!("{text:?} is not a whole number of milliseconds"))
            }),
        })
        .collect()
}

impl RedeliverySettings {
    pub fn delivery_budget(&self) -> Duration {
        Duration::from_millis(self.delivery_budget_ms)
    }

    /// Returns the delay before delivery `attempt + 1`, after `attempt` deliveries (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let index = (attempt.max(1) as usize - 1).min(self.delays_ms.len().saturating_sub(1));
        Duration::from_millis(self.delays_ms.get(index).copied().unwrap_or(0))
    }

    /// Returns the delay queue level (1-based) used after `attempt` deliveries.
    pub fn level_after(&self, attempt: u32) -> usize {
        (attempt.max(1) as usize).min(self.delays_ms.len().max(1))
    }
}

/// Limits on what one job may contain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobLimits {
    pub max_message_bytes: usize,
    pub max_keys: usize,
    pub max_urls: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub shutdown_timeout_ms: u64,
}

impl WorkerSettings {
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

/// The metrics and health endpoint, and the token checks behind them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Address of `/metrics`, `/healthz` and `/readyz`; empty turns the endpoint off.
    pub listen: String,
    pub token_expiry_warning_days: u32,
    pub token_check_interval_s: u64,
    pub queue_poll_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub filter: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The source of an account's token. Exactly one field must be set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSource {
    pub token_env: Option<String>,
    pub token_file: Option<PathBuf>,
}

/// A Fastly account the worker can act for: its name and its API token.
#[derive(Clone)]
pub struct Account {
    name: String,
    token: SecretString,
}

impl Account {
    /// Creates an account, checking that the token can be sent as an HTTP header.
    pub fn new(name: impl Into<String>, token: SecretString) -> Result<Account, ConfigError> {
        let name = name.into();
        let trimmed = token.expose_secret().trim();
        if trimmed.is_empty() {
            return Err(ConfigError::Account {
                account: name,
                reason: "the API token is empty".to_owned(),
            });
        }
        if !trimmed.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ConfigError::Account {
                account: name,
                reason: "the API token contains characters that an HTTP header cannot carry \
                         (spaces, control characters or non-ASCII); copy it again from Fastly"
                    .to_owned(),
            });
        }
        let token = SecretString::from(trimmed.to_owned());
        Ok(Account { name, token })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the token. Only the Fastly client calls this, to build the `Fastly-Key`
    /// header; nothing else may log, store or send it.
    pub(crate) fn expose_token(&self) -> &str {
        self.token.expose_secret()
    }
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// Validated runtime configuration: settings plus the accounts with their tokens.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings: Settings,
    pub api_url: Url,
    pub accounts: BTreeMap<String, Account>,
}

impl Settings {
    /// Returns the prefetch of each consumer: the configured value, or its part of a window of
    /// batch.max_keys x limits.max_in_flight x 2, so that one-key jobs can fill every in-flight
    /// request and the next round of batches.
    pub fn prefetch(&self) -> u16 {
        self.broker.prefetch.unwrap_or_else(|| {
            let window = self.batch.max_keys as u64 * u64::from(self.limits.max_in_flight) * 2;
            let per_consumer = window.div_ceil(u64::from(self.broker.consumers.max(1)));
            u16::try_from(per_consumer.clamp(1, u64::from(u16::MAX))).unwrap_or(u16::MAX)
        })
    }

    /// Returns the names of the delay queues, one per configured delay.
    pub fn retry_queues(&self) -> Vec<String> {
        (1..=self.redelivery.delays_ms.len().max(1))
            .map(|level| format!("{}.{level}", self.broker.retry_queue))
            .collect()
    }

    /// Loads the built-in defaults, then `file` when given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Returns the built-in defaults, untouched by the environment.
    pub fn defaults() -> Settings {
        Self::load_with_env(None, std::iter::empty()).expect("the built-in defaults are valid")
    }

    /// Loads like [`Settings::load`], with `vars` in place of the process environment, so
    /// tests see only the variables they pass.
    pub fn load_with_env(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        use config::{Environment, File, FileFormat};

        // FPW_CONFIG names the settings file for the command line; it is not a setting.
        let vars: config::Map<String, String> = vars
            .into_iter()
            .filter(|(name, _)| name != "FPW_CONFIG")
            .collect();
        let well_known = |name: &str| vars.get(name).cloned();
        let mut builder =
            config::Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
        }
        builder = builder
            .add_source(
                Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("_")
                    .separator(ENV_SEPARATOR)
                    // Lists come as comma-separated values: FPW_REDELIVERY__DELAYS_MS=1000,5000.
                    .list_separator(",")
                    .with_list_parse_key("redelivery.delays_ms")
                    .try_parsing(true)
                    .source(Some(vars.clone())),
            )
            .set_override_option("broker.url", well_known("AMQP_URL"))?
            .set_override_option("fastly.api_url", well_known("FASTLY_API_URL"))?;

        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every setting that a wrong value would break only later, at run time.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let broker = &self.broker;
        for (key, name) in [
            ("broker.jobs_queue", &broker.jobs_queue),
            ("broker.results_queue", &broker.results_queue),
            ("broker.dead_letter_queue", &broker.dead_letter_queue),
        ] {
            check_queue_name(key, name)?;
        }
        check_queue_name("broker.retry_queue", &format!("{}.99", broker.retry_queue))?;
        let mut names = vec![
            broker.jobs_queue.clone(),
            broker.results_queue.clone(),
            broker.dead_letter_queue.clone(),
        ];
        names.extend(self.retry_queues());
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != names.len() {
            return Err(invalid(
                "broker.jobs_queue",
                &broker.jobs_queue,
                "the jobs, results, dead-letter and retry queues must have different names",
            ));
        }
        Url::parse(&broker.url)
            .ok()
            .filter(|url| matches!(url.scheme(), "amqp" | "amqps"))
            .ok_or_else(|| {
                invalid(
                    "broker.url",
                    &broker.redacted_url(),
                    "expected an amqp:// or amqps:// URL such as amqp://guest:guest@127.0.0.1:5672/%2f \
                     (set it with AMQP_URL or broker.url)",
                )
            })?;
        if !(1..=64).contains(&broker.consumers) {
            return Err(invalid(
                "broker.consumers",
                &broker.consumers.to_string(),
                "must be from 1 to 64",
            ));
        }
        if broker.prefetch == Some(0) {
            return Err(invalid(
                "broker.prefetch",
                "0",
                "must be at least 1, because 0 means unlimited deliveries to RabbitMQ",
            ));
        }
        positive("broker.publish_timeout_ms", broker.publish_timeout_ms)?;
        for binding in &broker.bindings {
            if binding.exchange.is_empty() || binding.exchange.starts_with("amq.") {
                return Err(invalid(
                    "broker.bindings.exchange",
                    &binding.exchange,
                    "name an exchange of your own; the default exchange and amq.* exchanges cannot be declared",
                ));
            }
            check_short_string("broker.bindings.exchange", &binding.exchange)?;
            check_short_string("broker.bindings.routing_key", &binding.routing_key)?;
            if !matches!(
                binding.exchange_type.as_str(),
                "direct" | "fanout" | "topic" | "headers"
            ) {
                return Err(invalid(
                    "broker.bindings.exchange_type",
                    &binding.exchange_type,
                    "expected direct, fanout, topic or headers",
                ));
            }
        }

        api_url(&self.fastly.api_url)?;
        positive("fastly.request_timeout_ms", self.fastly.request_timeout_ms)?;
        positive("fastly.connect_timeout_ms", self.fastly.connect_timeout_ms)?;
        let retry = &self.fastly.retry;
        positive("fastly.retry.max_attempts", u64::from(retry.max_attempts))?;
        if retry.max_delay_ms < retry.min_delay_ms {
            return Err(invalid(
                "fastly.retry.max_delay_ms",
                &retry.max_delay_ms.to_string(),
                "must not be smaller than fastly.retry.min_delay_ms",
            ));
        }

        positive("batch.linger_ms", self.batch.linger_ms)?;
        if self.batch.backlog_linger_ms < self.batch.linger_ms {
            return Err(invalid(
                "batch.backlog_linger_ms",
                &self.batch.backlog_linger_ms.to_string(),
                "must not be smaller than batch.linger_ms",
            ));
        }
        if !(1..=crate::fastly::MAX_KEYS_PER_REQUEST).contains(&self.batch.max_keys) {
            return Err(invalid(
                "batch.max_keys",
                &self.batch.max_keys.to_string(),
                "must be from 1 to 256, Fastly's limit of keys per bulk purge",
            ));
        }
        positive("limits.max_in_flight", u64::from(self.limits.max_in_flight))?;
        for (key, quota) in [
            ("limits.purge", &self.limits.purge),
            ("limits.write", &self.limits.write),
            ("limits.read", &self.limits.read),
        ] {
            positive(&format!("{key}.per_hour"), u64::from(quota.per_hour))?;
            positive(&format!("{key}.burst"), u64::from(quota.burst))?;
        }
        let redelivery = &self.redelivery;
        positive(
            "redelivery.max_attempts",
            u64::from(redelivery.max_attempts),
        )?;
        if redelivery.delays_ms.is_empty() || redelivery.delays_ms.contains(&0) {
            return Err(invalid(
                "redelivery.delays_ms",
                &format!("{:?}", redelivery.delays_ms),
                "give at least one delay, each greater than zero",
            ));
        }
        // A job must be able to wait for its batch, make one request and publish its result
        // within the budget.
        let minimum = self.fastly.request_timeout_ms
            + self.fastly.retry.max_delay_ms
            + self.batch.backlog_linger_ms
            + broker.publish_timeout_ms;
        if redelivery.delivery_budget_ms <= minimum {
            return Err(invalid(
                "redelivery.delivery_budget_ms",
                &redelivery.delivery_budget_ms.to_string(),
                &format!(
                    "must exceed {minimum}: fastly.request_timeout_ms + fastly.retry.max_delay_ms \
                     + batch.backlog_linger_ms + broker.publish_timeout_ms, so that a job can \
                     make one request and publish its result within it"
                ),
            ));
        }

        positive("jobs.max_message_bytes", self.jobs.max_message_bytes as u64)?;
        positive(
            "telemetry.token_check_interval_s",
            self.telemetry.token_check_interval_s,
        )?;
        positive(
            "telemetry.queue_poll_interval_ms",
            self.telemetry.queue_poll_interval_ms,
        )?;
        let listen = &self.telemetry.listen;
        if !listen.is_empty() && listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "telemetry.listen",
                listen,
                "expected an address such as 0.0.0.0:9090 or 127.0.0.1:9090, or empty to turn \
                 the endpoint off",
            ));
        }
        positive("jobs.max_keys", self.jobs.max_keys as u64)?;
        positive("jobs.max_urls", self.jobs.max_urls as u64)?;

        tracing_subscriber::EnvFilter::try_new(&self.log.filter)
            .map_err(|err| invalid("log.filter", &self.log.filter, &err.to_string()))?;
        Ok(())
    }

    /// Resolves every account's token and returns the runtime configuration.
    ///
    /// `env` reads environment variables, so tests can pass their own.
    pub fn resolve(self, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let api_url = api_url(&self.fastly.api_url)?;
        let mut accounts = BTreeMap::new();
        let mut default_missing = None;
        for (name, source) in &self.accounts {
            check_account_name(name)?;
            match read_token(name, source, &env) {
                Ok(token) => {
                    accounts.insert(name.clone(), Account::new(name.clone(), token)?);
                }
                Err(TokenError::Unset(reason)) if name == DEFAULT_ACCOUNT => {
                    default_missing = Some(reason);
                }
                Err(TokenError::Unset(reason)) | Err(TokenError::Invalid(reason)) => {
                    return Err(ConfigError::Account {
                        account: name.clone(),
                        reason,
                    });
                }
            }
        }
        if accounts.is_empty() {
            return Err(ConfigError::NoToken);
        }
        if let Some(reason) = default_missing {
            tracing::warn!(
                account = DEFAULT_ACCOUNT,
                reason,
                "account has no token and is left out; jobs without an account field will be rejected"
            );
        }
        Ok(Config {
            settings: self,
            api_url,
            accounts,
        })
    }

    /// Returns the runtime configuration with every account given `token`, for the simulator.
    pub fn resolve_with_token(self, api_url: Url, token: &str) -> Result<Config, ConfigError> {
        let mut accounts = BTreeMap::new();
        for name in self.accounts.keys() {
            check_account_name(name)?;
            let account = Account::new(name.clone(), SecretString::from(token.to_owned()))?;
            accounts.insert(name.clone(), account);
        }
        Ok(Config {
            settings: self,
            api_url,
            accounts,
        })
    }
}

enum TokenError {
    /// The source is configured but empty or absent.
    Unset(String),
    /// The source is configured wrongly or cannot be read.
    Invalid(String),
}

fn read_token(
    account: &str,
    source: &AccountSource,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<SecretString, TokenError> {
    // A file wins over a variable: the built-in default account names FASTLY_API_TOKEN, and a
    // settings layer can add a file but cannot remove that name.
    match (&source.token_env, &source.token_file) {
        (_, Some(path)) => read_token_file(path),
        (None, None) => Err(TokenError::Invalid(format!(
            "no token source: set [accounts.{account}] token_env (an environment variable name) \
             or token_file (a file path)"
        ))),
        (Some(variable), None) => match env(variable) {
            Some(token) if !token.trim().is_empty() => Ok(SecretString::from(token)),
            _ => Err(TokenError::Unset(format!(
                "environment variable {variable} is not set or empty; set it to the account's \
                 Fastly API token"
            ))),
        },
    }
}

fn read_token_file(path: &Path) -> Result<SecretString, TokenError> {
    match std::fs::read_to_string(path) {
        Ok(token) if !token.trim().is_empty() => Ok(SecretString::from(token)),
        Ok(_) => Err(TokenError::Invalid(format!(
            "token file {} is empty; write the account's Fastly API token into it",
            path.display()
        ))),
        Err(err) => Err(TokenError::Invalid(format!(
            "cannot read token file {}: {err}",
            path.display()
        ))),
    }
}

/// Parses the Fastly API base URL and rejects plain http to anything but loopback.
pub fn api_url(value: &str) -> Result<Url, ConfigError> {
    let key = "fastly.api_url (FASTLY_API_URL)";
    let url = Url::parse(value).map_err(|err| {
        invalid(
            key,
            value,
            &format!("{err}; expected a URL such as https://api.fastly.com"),
        )
    })?;
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(invalid(
            key,
            value,
            "must be a plain base URL without user, query or fragment",
        ));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(invalid(
            key,
            value,
            "plain http would send the Fastly API token unencrypted across the network; use \
             https, or http only for a simulator on a loopback address (127.0.0.1, ::1, localhost)",
        )),
        _ => Err(invalid(key, value, "expected an https:// URL")),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Replaces the password of a URL, if any, with `***`.
pub fn redact_url(value: &str) -> String {
    match Url::parse(value) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            url.to_string()
        }
        // Without a parsable URL there is no password field to find, so hide everything
        // after a user part.
        Err(_) => match value.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => value.to_owned(),
        },
    }
}

fn check_queue_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(invalid(key, name, "a queue name must not be empty"));
    }
    if name.starts_with("amq.") {
        return Err(invalid(
            key,
            name,
            "RabbitMQ reserves names starting with amq. for itself",
        ));
    }
    check_short_string(key, name)
}

fn check_short_string(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.len() > 255 {
        return Err(invalid(key, value, "AMQP names are at most 255 bytes long"));
    }
    Ok(())
}

fn check_account_name(name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ConfigError::Account {
            account: name.to_owned(),
            reason: "account names are 1 to 64 letters, digits, '-' or '_'".to_owned(),
        })
    }
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        Err(invalid(key, "0", "must be greater than zero"))
    } else {
        Ok(())
    }
}

fn invalid(key: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    fn resolve_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_load_and_validate() {
        let settings = Settings::load_with_env(None, no_env()).unwrap();
        assert_eq!(settings.broker.jobs_queue, "fastly.jobs");
        assert_eq!(settings.broker.results_queue, "fastly.results");
        assert_eq!(settings.broker.dead_letter_queue, "fastly.jobs.dead");
        assert_eq!(settings.fastly.api_url, "https://api.fastly.com");
        assert_eq!(settings.jobs.max_message_bytes, 1024 * 1024);
        assert!(settings.accounts.contains_key("default"));
    }

    #[test]
    fn well_known_variables_override() {
        let env = [
            ("AMQP_URL", "amqp://u:p@broker:5672/vh"),
            ("FASTLY_API_URL", "http://127.0.0.1:9000"),
            ("FPW_BROKER__PREFETCH", "77"),
            ("FPW_REDELIVERY__DELAYS_MS", "1000,5000"),
            ("FPW_REDELIVERY__MAX_ATTEMPTS", "3"),
            ("FPW_CONFIG", "/etc/worker.toml"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned()));
        let settings = Settings::load_with_env(None, env).unwrap();
        assert_eq!(settings.prefetch(), 77);
        assert_eq!(settings.redelivery.delays_ms, [1000, 5000]);
        assert_eq!(settings.redelivery.max_attempts, 3);
        let single = Settings::load_with_env(
            None,
            [("FPW_REDELIVERY__DELAYS_MS".to_owned(), "200".to_owned())],
        )
        .unwrap();
        assert_eq!(single.redelivery.delays_ms, [200]);
        assert_eq!(settings.broker.url, "amqp://u:p@broker:5672/vh");
        assert_eq!(settings.fastly.api_url, "http://127.0.0.1:9000");
    }

    #[test]
    fn plain_http_rejected_for_remote_host() {
        let err = api_url("http://api.fastly.com").unwrap_err().to_string();
        assert!(err.contains("http://api.fastly.com"), "{err}");
        assert!(err.contains("unencrypted"), "{err}");
    }

    #[test]
    fn plain_http_accepted_for_loopback() {
        for url in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:80",
            "http://127.9.9.9",
        ] {
            assert!(api_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn https_accepted_and_junk_rejected() {
        assert!(api_url("https://api.fastly.com").is_ok());
        assert!(api_url("ftp://api.fastly.com").is_err());
        assert!(api_url("api.fastly.com").is_err());
        assert!(api_url("https://user@api.fastly.com").is_err());
    }

    #[test]
    fn token_read_from_env_and_trimmed() {
        let settings = Settings::load_with_env(None, no_env()).unwrap();
        let config = settings
            .resolve(|name| (name == "FASTLY_API_TOKEN").then(|| " tok-123\n".to_owned()))
            .unwrap();
        assert_eq!(config.accounts["default"].expose_token(), "tok-123");
    }

    #[test]
    fn missing_token_names_the_fix() {
        let settings = Settings::load_with_env(None, no_env()).unwrap();
        let err = settings.resolve(resolve_env).unwrap_err().to_string();
        assert!(err.contains("FASTLY_API_TOKEN"), "{err}");
        assert!(err.contains("--simulate"), "{err}");
    }

    #[test]
    fn token_from_file() {
        let dir = std::env::temp_dir().join(format!("fpw-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "file-token\n").unwrap();
        let mut settings = Settings::load_with_env(None, no_env()).unwrap();
        settings.accounts.insert(
            "shop".to_owned(),
            AccountSource {
                token_env: None,
                token_file: Some(path),
            },
        );
        let config = settings.resolve(resolve_env).unwrap();
        assert!(!config.accounts.contains_key("default"));
        assert_eq!(config.accounts["shop"].expose_token(), "file-token");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn token_never_in_debug_output() {
        let settings = Settings::load_with_env(None, no_env()).unwrap();
        let config = settings
            .resolve(|name| (name == "FASTLY_API_TOKEN").then(|| "s3cr3t-token".to_owned()))
            .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cr3t-token"), "{debug}");
        assert!(!debug.contains("guest:guest"), "{debug}");
    }

    #[test]
    fn token_with_newline_inside_rejected() {
        let err = Account::new("a", SecretString::from("abc\ndef".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("HTTP header"), "{err}");
        assert!(!err.contains("abc"), "{err}");
    }

    #[test]
    fn same_queue_names_rejected() {
        let mut settings = Settings::load_with_env(None, no_env()).unwrap();
        settings.broker.results_queue = settings.broker.jobs_queue.clone();
        assert!(settings.validate().is_err());
    }

    #[test]
    fn config_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("fpw-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("worker.toml");
        std::fs::write(&path, "[broker]\nprefetch = 7\n").unwrap();
        let settings = Settings::load_with_env(Some(&path), no_env()).unwrap();
        assert_eq!(settings.prefetch(), 7);
        assert_eq!(settings.broker.jobs_queue, "fastly.jobs");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unknown_setting_rejected() {
        let dir = std::env::temp_dir().join(format!("fpw-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("worker.toml");
        std::fs::write(&path, "[broker]\nprefetsh = 7\n").unwrap();
        let err = Settings::load_with_env(Some(&path), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefetsh"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn prefetch_derived_from_batch_and_in_flight() {
        let mut settings = Settings::load_with_env(None, no_env()).unwrap();
        assert_eq!(settings.broker.prefetch, None);
        assert_eq!(settings.broker.consumers, 4);
        assert_eq!(
            settings.prefetch(),
            256 * 16 * 2 / 4,
            "a quarter of the window each"
        );
        settings.broker.consumers = 3;
        assert_eq!(settings.prefetch(), 2731, "rounded up");
        settings.broker.consumers = 1;
        settings.limits.max_in_flight = 1000;
        assert_eq!(settings.prefetch(), u16::MAX);
    }

    #[test]
    fn redelivery_delays_grow_then_repeat() {
        let settings = Settings::load_with_env(None, no_env()).unwrap();
        let redelivery = &settings.redelivery;
        assert_eq!(redelivery.delay_after(1), Duration::from_secs(10));
        assert_eq!(redelivery.delay_after(2), Duration::from_secs(60));
        assert_eq!(redelivery.delay_after(9), Duration::from_secs(900));
        assert_eq!(redelivery.level_after(1), 1);
        assert_eq!(redelivery.level_after(9), 4);
        assert_eq!(
            settings.retry_queues(),
            [
                "fastly.jobs.retry.1",
                "fastly.jobs.retry.2",
                "fastly.jobs.retry.3",
                "fastly.jobs.retry.4"
            ]
        );
    }

    #[test]
    fn redact_url_hides_password() {
        assert_eq!(
            redact_url("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
    }
}
