//! Integration tests: the worker, in-process or as its binary, against the real RabbitMQ and
//! the Fastly simulator. Each test builds its own world with unique queue names, so the tests
//! run in parallel.

mod batching;
mod cli;
mod consumer;
mod failures;
mod hostile;
mod jobs;
mod malformed;
mod metrics;
mod process;
mod secrets;
mod shutdown;
mod topology;
mod validation;
mod world;
