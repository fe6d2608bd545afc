//! The API token never leaves through logs, results, dead letters or error output, even at
//! the most verbose log level and with failures.

use fastly_purge_worker::sim::{Fault, SimConfig, SimToken, Simulator};
use serde_json::json;

use crate::process::{WorkerProcess, command, delete_queues, with_queues};
use crate::world::{Client, test_settings, unique_prefix};

const SECRET: &str = "fpw-secret-token-7f3a9c1e";
/// A token the simulator does not know, so its account gets 401 replies.
const STALE_SECRET: &str = "fpw-stale-token-42b8d0aa";

// Multi-threaded, because the simulator runs in this runtime while the test thread blocks on
// the child process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_absent_from_logs_results_and_dead_letters() {
    let prefix = unique_prefix("secrets");
    let sim = Simulator::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            tokens: vec![SimToken::global(SECRET)],
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();
    sim.inject(Fault::status("/service/S1/purge_all", 503, 100));

    let mut worker = command(&["run"]);
    with_queues(&mut worker, &prefix);
    worker
        .env("FASTLY_API_TOKEN", SECRET)
        .env("STALE_TOKEN", STALE_SECRET)
        .env("FPW_ACCOUNTS__STALE__TOKEN_ENV", "STALE_TOKEN")
        .env("FASTLY_API_URL", sim.base_url())
        .env("FPW_FASTLY__RETRY__MIN_DELAY_MS", "1")
        .env("FPW_FASTLY__RETRY__MAX_DELAY_MS", "5")
        .env("FPW_REDELIVERY__MAX_ATTEMPTS", "1")
        .env("FPW_BATCH__LINGER_MS", "10")
        .env("RUST_LOG", "trace");
    let process = WorkerProcess::start(worker);

    let settings = test_settings(&prefix);
    let mut client = Client::connect(&settings).await;
    let jobs = [
        json!({"type": "purge_keys", "service_id": "S1", "keys": ["a", "b"]}),
        json!({"type": "purge_all", "service_id": "S1"}),
        json!({"type": "get_token"}),
        json!({"type": "get_account"}),
        json!({"type": "purge_urls", "urls": ["https://example.com/x"], "account": "stale"}),
        json!({"type": "purge_keys", "service_id": "S1", "keys": ["bad key"]}),
    ];
    let mut correlations = Vec::new();
    for job in &jobs {
        correlations.push(client.send(job).await);
    }
    let mut everything = String::new();
    for correlation in &correlations {
        let reply = client.reply_for(correlation).await;
        everything.push_str(&reply.json.to_string());
    }
    for letter in client
        .get_messages(&settings.broker.dead_letter_queue, 3)
        .await
    {
        everything.push_str(&String::from_utf8_lossy(&letter.data));
        everything.push_str(&format!("{:?}", letter.properties));
    }
    assert!(
        everything.contains("fastly_unauthorized"),
        "the stale account must fail: {everything}"
    );
    assert!(everything.contains("fastly_server_error"));

    let (status, output) = process.terminate();
    assert!(
        status.success(),
        "the worker exited with {status}:\n{output}"
    );
    assert!(
        output.contains("Fastly request failed, retrying"),
        "retries are logged"
    );
    for secret in [SECRET, STALE_SECRET] {
        assert!(!output.contains(secret), "a token appears in the logs");
        assert!(
            !everything.contains(secret),
            "a token appears in a result or dead letter"
        );
    }

    // The token may appear only in the Fastly-Key header, where the simulator read it.
    let requests = sim.requests();
    assert!(requests.iter().any(|r| r.token.as_deref() == Some(SECRET)));
    for request in &requests {
        assert!(!request.path.contains(SECRET));
        assert!(
            request
                .headers
                .iter()
                .all(|(_, value)| !value.contains(SECRET))
        );
    }
    sim.stop().await;
    delete_queues(&prefix);
}

#[test]
fn token_absent_from_configuration_errors() {
    let output = command(&["run"])
        .env("FASTLY_API_TOKEN", format!("{SECRET}\u{7}"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("HTTP header"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
}
