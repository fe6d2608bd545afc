//! The worker binary as a child process, with its logs collected for assertions.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of the binary under test, built by cargo for the integration tests.
pub const BINARY: &str = env!("CARGO_BIN_EXE_fastly-purge-worker");

/// Builds a command for the binary with a clean environment for settings: no config file, no
/// `FPW_` variables inherited from the developer's shell.
pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command.args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("FPW_") || name == "FASTLY_API_TOKEN" || name == "FASTLY_API_URL" {
            command.env_remove(name);
        }
    }
    command.env("AMQP_URL", crate::world::amqp_url());
    command.env("NO_COLOR", "1");
    // Workers run side by side, so none takes the default metrics port.
    command.env("FPW_TELEMETRY__LISTEN", "127.0.0.1:0");
    command
}

/// Sets the queue names of a test world on a command.
pub fn with_queues(command: &mut Command, prefix: &str) {
    command
        .env("FPW_BROKER__JOBS_QUEUE", format!("{prefix}.jobs"))
        .env("FPW_BROKER__RESULTS_QUEUE", format!("{prefix}.results"))
        .env("FPW_BROKER__DEAD_LETTER_QUEUE", format!("{prefix}.dead"))
        .env("FPW_BROKER__RETRY_QUEUE", format!("{prefix}.retry"))
        .env("FPW_BROKER__QUEUE_TYPE", "classic");
}

/// A running worker process whose standard output and error are collected.
pub struct WorkerProcess {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl WorkerProcess {
    /// Starts the command and waits until the worker logs that it consumes jobs.
    pub fn start(mut command: Command) -> WorkerProcess {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the worker binary");
        let output = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take().unwrap(), Arc::clone(&output));
        collect(child.stderr.take().unwrap(), Arc::clone(&output));
        let process = WorkerProcess { child, output };
        process.wait_for_log("consuming jobs", Duration::from_secs(30));
        process
    }

    /// Waits until the collected output contains `text`.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.output().contains(text) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the worker did not log {text:?} in time; output:\n{}",
            self.output()
        );
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Give the reader threads a moment to take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return (status, self.output());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the worker did not exit after SIGTERM; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(stream: impl Read + Send + 'static, output: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let reader = BufReader::new(stream);
        for line in reader.lines().map_while(Result::ok) {
            let mut output = output.lock().unwrap();
            output.push_str(&line);
            output.push('\n');
        }
    });
}

/// Deletes a test's queues: jobs, results, dead letters and the default four delay queues.
pub fn delete_queues(prefix: &str) {
    let mut names: Vec<String> = ["jobs", "results", "dead"]
        .iter()
        .map(|suffix| format!("{prefix}.{suffix}"))
        .collect();
    names.extend((1..=4).map(|level| format!("{prefix}.retry.{level}")));
    delete_named_queues(names);
}

/// Deletes queues on a thread with a runtime of its own, so it works inside or outside a
/// test's runtime and from `Drop`.
pub fn delete_named_queues(names: Vec<String>) {
    let deleted = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let Ok(connection) = lapin::Connection::connect(
                &crate::world::amqp_url(),
                lapin::ConnectionProperties::default(),
            )
            .await
            else {
                return;
            };
            if let Ok(channel) = connection.create_channel().await {
                for name in &names {
                    let _ = channel
                        .queue_delete(
                            name.as_str().into(),
                            lapin::options::QueueDeleteOptions::default(),
                        )
                        .await;
                }
            }
            let _ = connection.close(200, "done".into()).await;
        });
    })
    .join();
    if deleted.is_err() {
        eprintln!("deleting the test queues failed");
    }
}
