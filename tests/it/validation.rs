//! Every validation rule through the broker: each invalid job gets a rejected result with the
//! rule's error code, a dead letter, and no Fastly request.

use fastly_purge_worker::job::{ErrorCode, Status};
use serde_json::{Value, json};

use crate::world::{World, WorldBuilder, header};

fn rules() -> Vec<(&'static str, Value, ErrorCode)> {
    let long_key = "k".repeat(1025);
    let many_keys: Vec<String> = (0..11).map(|i| format!("k{i}")).collect();
    let many_urls: Vec<String> = (0..4).map(|i| format!("https://example.com/{i}")).collect();
    vec![
        (
            "no type",
            json!({"service_id": "S1"}),
            ErrorCode::MissingField,
        ),
        (
            "unknown type",
            json!({"type": "purge_everything"}),
            ErrorCode::UnknownType,
        ),
        (
            "type not a string",
            json!({"type": ["purge_all"]}),
            ErrorCode::InvalidField,
        ),
        (
            "no service_id",
            json!({"type": "purge_all"}),
            ErrorCode::MissingField,
        ),
        (
            "service_id with dash",
            json!({"type": "purge_all", "service_id": "S-1"}),
            ErrorCode::InvalidField,
        ),
        (
            "service_id with slash",
            json!({"type": "get_service", "service_id": "S1/../x"}),
            ErrorCode::InvalidField,
        ),
        (
            "service_id a number",
            json!({"type": "get_service", "service_id": 7}),
            ErrorCode::InvalidField,
        ),
        (
            "no keys",
            json!({"type": "purge_keys", "service_id": "S1"}),
            ErrorCode::MissingField,
        ),
        (
            "empty keys",
            json!({"type": "purge_keys", "service_id": "S1", "keys": []}),
            ErrorCode::InvalidField,
        ),
        (
            "keys a string",
            json!({"type": "purge_keys", "service_id": "S1", "keys": "a"}),
            ErrorCode::InvalidField,
        ),
        (
            "key a number",
            json!({"type": "purge_keys", "service_id": "S1", "keys": [1]}),
            ErrorCode::InvalidField,
        ),
        (
            "empty key",
            json!({"type": "purge_keys", "service_id": "S1", "keys": [""]}),
            ErrorCode::InvalidField,
        ),
        (
            "key with space",
            json!({"type": "purge_keys", "service_id": "S1", "keys": ["a b"]}),
            ErrorCode::InvalidField,
        ),
        (
            "key with newline",
            json!({"type": "purge_keys", "service_id": "S1", "keys": ["a\r\nb"]}),
            ErrorCode::InvalidField,
        ),
        (
            "key non-ASCII",
            json!({"type": "purge_keys", "service_id": "S1", "keys": ["caf\u{e9}"]}),
            ErrorCode::InvalidField,
        ),
        (
            "key too long",
            json!({"type": "purge_keys", "service_id": "S1", "keys": [long_key]}),
            ErrorCode::InvalidField,
        ),
        (
            "too many keys",
            json!({"type": "purge_keys", "service_id": "S1", "keys": many_keys}),
            ErrorCode::InvalidField,
        ),
        (
            "soft a string",
            json!({"type": "purge_keys", "service_id": "S1", "keys": ["a"], "soft": "true"}),
            ErrorCode::InvalidField,
        ),
        (
            "no urls",
            json!({"type": "purge_urls"}),
            ErrorCode::MissingField,
        ),
        (
            "empty urls",
            json!({"type": "purge_urls", "urls": []}),
            ErrorCode::InvalidField,
        ),
        (
            "relative url",
            json!({"type": "purge_urls", "urls": ["/a/b"]}),
            ErrorCode::InvalidField,
        ),
        (
            "ftp url",
            json!({"type": "purge_urls", "urls": ["ftp://example.com/a"]}),
            ErrorCode::InvalidField,
        ),
        (
            "url with userinfo",
            json!({"type": "purge_urls", "urls": ["https://u:p@example.com/"]}),
            ErrorCode::InvalidField,
        ),
        (
            "url with line break",
            json!({"type": "purge_urls", "urls": ["https://example.com/a\nb"]}),
            ErrorCode::InvalidField,
        ),
        (
            "too many urls",
            json!({"type": "purge_urls", "urls": many_urls}),
            ErrorCode::InvalidField,
        ),
        (
            "soft purge_all",
            json!({"type": "purge_all", "service_id": "S1", "soft": true}),
            ErrorCode::InvalidField,
        ),
        (
            "page zero",
            json!({"type": "list_services", "page": 0}),
            ErrorCode::InvalidField,
        ),
        (
            "per_page a string",
            json!({"type": "list_services", "per_page": "20"}),
            ErrorCode::InvalidField,
        ),
        (
            "id a number",
            json!({"type": "get_token", "id": 5}),
            ErrorCode::InvalidField,
        ),
        (
            "account a number",
            json!({"type": "get_token", "account": 1}),
            ErrorCode::InvalidField,
        ),
        (
            "unknown account",
            json!({"type": "get_token", "account": "nobody"}),
            ErrorCode::UnknownAccount,
        ),
    ]
}

#[tokio::test]
async fn every_rule_rejects_before_fastly() {
    let mut builder = WorldBuilder::new("validation");
    builder.settings.jobs.max_keys = 10;
    builder.settings.jobs.max_urls = 3;
    let mut world = builder.start().await;
    let requests_at_start = world.sim.requests().len();

    let rules = rules();
    let mut sent = Vec::new();
    for (name, job, code) in &rules {
        sent.push((name, code, world.send(job.clone()).await));
    }
    for (name, code, correlation) in sent {
        let reply = world.client.reply_for(&correlation).await;
        assert_eq!(
            reply.result.status,
            Status::Rejected,
            "{name}: {}",
            reply.json
        );
        let error = reply.result.error.as_ref().unwrap();
        assert_eq!(error.code, *code, "{name}: {}", error.message);
        assert!(!error.message.is_empty(), "{name}");
        assert_eq!(error.http_status, None, "{name}");
        assert_eq!(reply.result.attempts, 0, "{name}");
        assert!(reply.json["output"].is_null(), "{name}");
    }

    let dead = world.dead_letters(rules.len()).await;
    assert_eq!(dead.len(), rules.len());
    for message in &dead {
        assert_eq!(header(message, "x-job-status").as_deref(), Some("rejected"));
        assert!(header(message, "x-error-code").is_some());
        assert!(header(message, "x-error-message").is_some());
    }
    assert_eq!(
        world.sim.requests().len(),
        requests_at_start,
        "no job may reach Fastly"
    );
    world.finish().await;
}

#[tokio::test]
async fn unknown_fields_ignored() {
    let mut world = World::start("unknown_fields").await;
    let reply = world
        .run(json!({"type": "purge_keys", "service_id": "S1", "keys": ["a"], "cms": {"post": 7}, "priority": "high"}))
        .await;
    assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);
    world.finish().await;
}

#[tokio::test]
async fn error_message_names_field_and_value() {
    let mut world = World::start("error_message").await;
    let reply = world
        .run(json!({"type": "purge_keys", "service_id": "S1", "keys": ["ok", "bad key"]}))
        .await;
    let message = &reply.result.error.as_ref().unwrap().message;
    assert!(message.contains("keys"), "{message}");
    assert!(message.contains("item 1"), "{message}");
    assert!(message.contains("bad key"), "{message}");
    world.finish().await;
}
