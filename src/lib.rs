//! fastly-purge-worker: a RabbitMQ consumer that purges Fastly content (by surrogate key, by
//! URL, or everything of a service), runs inspection jobs, and publishes a result for
//! every job.
//!
//! The crate, by responsibility:
//! - [`config`] loads typed settings from built-in defaults, a file and the environment, and
//!   holds the accounts with their API tokens as secrets.
//! - [`job`] is the job and result contract: decoding, validation, error codes.
//! - [`broker`] talks to RabbitMQ: topology, consuming, publishing with confirms, acks.
//! - [`fastly`] is the Fastly API client with its error classification.
//! - [`batch`] coalesces surrogate-key purges and purge_all jobs into shared requests.
//! - [`limits`] holds the rate budgets per account and budget class.
//! - [`gateway`] sends every Fastly request within its budget, with retries.
//! - [`retry`] decides attempts and backoff for Fastly requests.
//! - [`worker`] runs the pipeline that takes a delivery from decode to settle.
//! - [`sim`] is a local Fastly API simulator for tests, demos and benchmarks.
//! - [`telemetry`] sets up logging, keeps the metrics, and serves `/metrics`, `/healthz` and
//!   `/readyz`.
//! - [`cli`] is the command line (`run`, `enqueue`, `simulate-fastly`, `check`).

pub mod batch;
pub mod broker;
pub mod cli;
pub mod config;
pub mod fastly;
pub mod gateway;
pub mod job;
pub mod limits;
pub mod retry;
pub mod sim;
pub mod telemetry;
pub mod worker;
