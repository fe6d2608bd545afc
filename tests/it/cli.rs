//! The command line as a user runs it: `run --simulate`, `enqueue --wait`, `check`, and the
//! errors a user sees first.

use serde_json::Value;

use crate::process::{WorkerProcess, command, delete_queues, with_queues};
use crate::world::unique_prefix;

#[test]
fn quick_start_round_trip() {
    let prefix = unique_prefix("cli");
    let mut run = command(&["run", "--simulate"]);
    with_queues(&mut run, &prefix);
    let worker = WorkerProcess::start(run);
    assert!(
        worker.output().contains("nothing reaches Fastly"),
        "{}",
        worker.output()
    );

    let mut enqueue = command(&[
        "enqueue",
        "purge-keys",
        "--service",
        "SVC1",
        "article-1",
        "home",
        "--wait",
        "--timeout",
        "20",
    ]);
    with_queues(&mut enqueue, &prefix);
    let output = enqueue.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "enqueue failed: {stderr}");
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["status"], "succeeded");
    assert!(result["output"]["purge_ids"]["article-1"].is_string());
    assert!(result["output"]["purge_ids"]["home"].is_string());

    let mut token = command(&["enqueue", "get-token", "--wait"]);
    with_queues(&mut token, &prefix);
    let output = token.output().unwrap();
    assert!(output.status.success());
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["output"]["scope"], "global");

    let (status, logs) = worker.terminate();
    assert!(status.success(), "the worker exited with {status}:\n{logs}");
    assert!(logs.contains("worker stopped"), "{logs}");
    delete_queues(&prefix);
}

#[test]
fn enqueue_checks_job_before_publishing() {
    let output = command(&["enqueue", "purge-all", "--service", "not/a/service"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("service_id"), "{stderr}");
    assert!(stderr.contains("not/a/service"), "{stderr}");
}

#[test]
fn enqueue_wait_exits_nonzero_for_rejected_job() {
    let prefix = unique_prefix("cli_reject");
    let mut run = command(&["run", "--simulate"]);
    with_queues(&mut run, &prefix);
    let worker = WorkerProcess::start(run);

    let mut enqueue = command(&["enqueue", "get-token", "--account", "nobody", "--wait"]);
    with_queues(&mut enqueue, &prefix);
    let output = enqueue.output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["status"], "rejected");
    assert_eq!(result["error"]["code"], "unknown_account");

    drop(worker);
    delete_queues(&prefix);
}

#[test]
fn run_without_token_explains_the_fix() {
    let output = command(&["run"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("FASTLY_API_TOKEN"), "{stderr}");
    assert!(stderr.contains("--simulate"), "{stderr}");
}

#[test]
fn remote_plain_http_rejected() {
    let output = command(&["run"])
        .env("FASTLY_API_TOKEN", "t")
        .env("FASTLY_API_URL", "http://api.fastly.com")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("http://api.fastly.com"), "{stderr}");
    assert!(stderr.contains("unencrypted"), "{stderr}");
}

#[test]
fn check_with_simulator_passes() {
    let prefix = unique_prefix("cli_check");
    let mut check = command(&["check", "--simulate"]);
    with_queues(&mut check, &prefix);
    let output = check.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("account default"), "{stdout}");
    assert!(stdout.contains("purge_all: yes"), "{stdout}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
    delete_queues(&prefix);
}

#[test]
fn check_reports_unreachable_broker() {
    let output = command(&["check", "--simulate"])
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("broker: PROBLEM"), "{stdout}");
    assert!(
        !stdout.contains("guest:guest"),
        "the password is redacted: {stdout}"
    );
}
