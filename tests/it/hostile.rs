//! Hostile input: a corpus of malformed and malicious messages. Each gets a rejected result and
//! a dead letter, none reaches Fastly, and the worker keeps running.

use fastly_purge_worker::job::Status;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, ByteArray, FieldArray, FieldTable, LongString};
use serde_json::json;

use crate::world::WorldBuilder;

/// Returns the corpus: a name, a body and the properties to publish it with.
fn corpus() -> Vec<(&'static str, Vec<u8>, BasicProperties)> {
    let plain = BasicProperties::default;
    let job = |value: serde_json::Value| serde_json::to_vec(&value).unwrap();
    let many_keys: Vec<String> = (0..100_000).map(|i| format!("k{i}")).collect();
    let nested = format!(
        "{{\"type\":\"purge_all\",\"service_id\":\"S1\",\"x\":{}{}}}",
        "[".repeat(50_000),
        "]".repeat(50_000)
    );

    let mut odd_headers = FieldTable::default();
    odd_headers.insert("x-retry-count".into(), AMQPValue::LongString("9999".into()));
    odd_headers.insert("x-death".into(), AMQPValue::LongString("not a list".into()));
    odd_headers.insert("x-attempt-count".into(), AMQPValue::Double(-1.0));
    odd_headers.insert(
        "blob".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![0u8, 255, 10, 13])),
    );
    odd_headers.insert(
        "deep".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::FieldTable(
                FieldTable::default()
            );
            1000
        ])),
    );
    odd_headers.insert(
        "text".into(),
        AMQPValue::LongString(LongString::from(vec![0xffu8, 0xfe, b'\n'])),
    );

    vec![
        (
            "invalid utf-8",
            b"{\"type\":\"purge_all\",\"service_id\":\"S1\xc3\x28\"}".to_vec(),
            plain(),
        ),
        ("deep nesting", nested.into_bytes(), plain()),
        ("10 MiB body", vec![b' '; 10 * 1024 * 1024], plain()),
        (
            "huge key count",
            job(json!({"type": "purge_keys", "service_id": "S1", "keys": many_keys})),
            plain(),
        ),
        (
            "NUL in key",
            job(json!({"type": "purge_keys", "service_id": "S1", "keys": ["a\u{0}b"]})),
            plain(),
        ),
        (
            "escape in key",
            job(json!({"type": "purge_keys", "service_id": "S1", "keys": ["\u{1b}[2J"]})),
            plain(),
        ),
        (
            "CR LF in key",
            job(
                json!({"type": "purge_keys", "service_id": "S1", "keys": ["a\r\nSurrogate-Key: all"]}),
            ),
            plain(),
        ),
        (
            "CR LF in URL",
            job(json!({"type": "purge_urls", "urls": ["https://example.com/a\r\nFastly-Key: x"]})),
            plain(),
        ),
        (
            "tab in URL host",
            job(json!({"type": "purge_urls", "urls": ["https://exa\tmple.com/"]})),
            plain(),
        ),
        (
            "javascript scheme",
            job(json!({"type": "purge_urls", "urls": ["javascript:alert(1)"]})),
            plain(),
        ),
        (
            "file scheme",
            job(json!({"type": "purge_urls", "urls": ["file:///etc/passwd"]})),
            plain(),
        ),
        (
            "data scheme",
            job(json!({"type": "purge_urls", "urls": ["data:text/plain,hi"]})),
            plain(),
        ),
        (
            "gopher scheme",
            job(json!({"type": "purge_urls", "urls": ["gopher://example.com/"]})),
            plain(),
        ),
        (
            "userinfo in URL",
            job(json!({"type": "purge_urls", "urls": ["https://admin:secret@example.com/"]})),
            plain(),
        ),
        (
            "host of dots",
            job(json!({"type": "purge_urls", "urls": ["http://../service/S1/purge_all"]})),
            plain(),
        ),
        (
            "service id path",
            job(json!({"type": "purge_all", "service_id": "S1/../../tokens"})),
            plain(),
        ),
        (
            "service id query",
            job(json!({"type": "get_service", "service_id": "S1?x=1"})),
            plain(),
        ),
        (
            "text content type",
            job(json!({"type": "get_token"})),
            plain().with_content_type("text/plain".into()),
        ),
        (
            "form content type",
            job(json!({"type": "get_token"})),
            plain().with_content_type("application/x-www-form-urlencoded".into()),
        ),
        (
            "odd headers",
            job(json!({"type": "purge_keys", "service_id": "S1", "keys": []})),
            plain().with_headers(odd_headers),
        ),
        (
            "control characters in message id",
            b"not json".to_vec(),
            plain().with_message_id("id\u{0}\r\n".into()),
        ),
    ]
}

#[tokio::test]
async fn hostile_corpus_rejected_and_dead_lettered() {
    let mut builder = WorldBuilder::new("hostile");
    builder.settings.jobs.max_keys = 1000;
    let mut world = builder.start().await;
    let before = world.sim.requests().len();

    let corpus = corpus();
    let mut sent = Vec::new();
    for (index, (name, body, properties)) in corpus.iter().enumerate() {
        let correlation = format!("hostile-{index}");
        let properties = properties
            .clone()
            .with_reply_to(world.client.reply_queue.as_str().into())
            .with_correlation_id(correlation.as_str().into());
        world.client.publish(body, properties).await;
        sent.push((*name, correlation));
    }
    for (name, correlation) in sent {
        let reply = world.client.reply_for(&correlation).await;
        assert_eq!(
            reply.result.status,
            Status::Rejected,
            "{name}: {}",
            reply.json
        );
        assert!(reply.result.error.is_some(), "{name}");
    }
    assert_eq!(
        world.sim.requests().len(),
        before,
        "no hostile message reached Fastly"
    );

    // The worker is still running.
    let reply = world
        .run(json!({"type": "purge_keys", "service_id": "S1", "keys": ["still-alive"]}))
        .await;
    assert_eq!(reply.result.status, Status::Succeeded);
    let counts = world.stop_and_count().await;
    assert_eq!(counts.jobs, 0);
    assert_eq!(
        counts.dead as usize,
        corpus.len(),
        "every hostile message was dead-lettered"
    );
    world.finish().await;
}
