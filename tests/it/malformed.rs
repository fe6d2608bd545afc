//! Messages that are not jobs: each gets a rejected result when it has a reply_to, and a dead
//! letter, and the worker goes on with the next job.

use fastly_purge_worker::job::{ErrorCode, Status};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;

use crate::world::{World, header};

#[tokio::test]
async fn malformed_messages_rejected_and_dead_lettered() {
    let mut world = World::start("malformed").await;
    let before = world.sim.requests().len();
    let mut weird_headers = FieldTable::default();
    weird_headers.insert("x-count".into(), AMQPValue::Double(1.5));
    weird_headers.insert(
        "nested".into(),
        AMQPValue::FieldTable(FieldTable::default()),
    );

    let cases: Vec<(&str, Vec<u8>, BasicProperties, ErrorCode)> = vec![
        (
            "not json",
            b"purge everything".to_vec(),
            BasicProperties::default(),
            ErrorCode::InvalidJson,
        ),
        (
            "truncated json",
            b"{\"type\": \"purge_all\"".to_vec(),
            BasicProperties::default(),
            ErrorCode::InvalidJson,
        ),
        (
            "array",
            b"[1, 2]".to_vec(),
            BasicProperties::default(),
            ErrorCode::NotAnObject,
        ),
        (
            "string",
            b"\"purge_all\"".to_vec(),
            BasicProperties::default(),
            ErrorCode::NotAnObject,
        ),
        (
            "empty body",
            Vec::new(),
            BasicProperties::default(),
            ErrorCode::InvalidJson,
        ),
        (
            "invalid utf-8",
            b"{\"type\": \"\xff\xfe\"}".to_vec(),
            BasicProperties::default(),
            ErrorCode::InvalidUtf8,
        ),
        (
            "xml content type",
            b"{\"type\": \"get_token\"}".to_vec(),
            BasicProperties::default().with_content_type("application/xml".into()),
            ErrorCode::UnsupportedContentType,
        ),
        (
            "gzip encoding",
            b"{\"type\": \"get_token\"}".to_vec(),
            BasicProperties::default().with_content_encoding("gzip".into()),
            ErrorCode::UnsupportedContentType,
        ),
        (
            "unknown type",
            br#"{"type": "flush"}"#.to_vec(),
            BasicProperties::default(),
            ErrorCode::UnknownType,
        ),
        (
            "keys wrong type",
            br#"{"type": "purge_keys", "service_id": "S1", "keys": {"a": 1}}"#.to_vec(),
            BasicProperties::default(),
            ErrorCode::InvalidField,
        ),
        (
            "odd headers",
            br#"{"type": "purge_keys", "service_id": "S1", "keys": 5}"#.to_vec(),
            BasicProperties::default().with_headers(weird_headers),
            ErrorCode::InvalidField,
        ),
    ];

    let mut correlations = Vec::new();
    for (index, (name, body, properties, code)) in cases.iter().enumerate() {
        let correlation = format!("malformed-{index}");
        let properties = properties
            .clone()
            .with_reply_to(world.client.reply_queue.as_str().into())
            .with_correlation_id(correlation.as_str().into());
        world.client.publish(body, properties).await;
        correlations.push((name, code, correlation));
    }
    for (name, code, correlation) in correlations {
        let reply = world.client.reply_for(&correlation).await;
        assert_eq!(reply.result.status, Status::Rejected, "{name}");
        assert_eq!(reply.result.error.as_ref().unwrap().code, *code, "{name}");
    }

    // The worker still runs jobs after all of that.
    let reply = world
        .run(json!({"type": "purge_keys", "service_id": "S1", "keys": ["after"]}))
        .await;
    assert_eq!(reply.result.status, Status::Succeeded);

    let dead = world.dead_letters(cases.len()).await;
    assert_eq!(dead.len(), cases.len());
    let purges = world.sim.requests().len() - before;
    assert_eq!(purges, 1, "only the valid job reached Fastly");
    world.finish().await;
}

#[tokio::test]
async fn job_id_of_non_json_comes_from_message_id() {
    let mut world = World::start("non_json_id").await;
    let with_id = world
        .client
        .reply_properties("c1")
        .with_message_id("m-1".into());
    world.client.publish(b"<xml/>", with_id).await;
    let reply = world.client.reply_for("c1").await;
    assert_eq!(reply.result.job_id.as_deref(), Some("m-1"));
    assert_eq!(reply.result.job_type, None);
    assert_eq!(reply.result.account, None);

    world
        .client
        .publish(b"<xml/>", world.client.reply_properties("c2"))
        .await;
    let reply = world.client.reply_for("c2").await;
    assert_eq!(reply.result.job_id, None);
    assert!(reply.json["job_id"].is_null());
    world.finish().await;
}

#[tokio::test]
async fn dead_letter_keeps_body_and_properties() {
    let mut world = World::start("dead_letter_copy").await;
    let mut headers = FieldTable::default();
    headers.insert("cms-event".into(), AMQPValue::LongString("publish".into()));
    let properties = world
        .client
        .reply_properties("dl")
        .with_message_id("m-dl".into())
        .with_headers(headers)
        .with_expiration("600000".into());
    let body = br#"{"type": "purge_keys", "service_id": "S1", "keys": []}"#;
    world.client.publish(body, properties).await;
    let reply = world.client.reply_for("dl").await;
    assert_eq!(reply.result.status, Status::Rejected);

    let dead = world.dead_letters(1).await;
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter.data, body);
    let properties = &letter.properties;
    assert_eq!(
        properties.message_id().as_ref().map(|v| v.as_str()),
        Some("m-dl")
    );
    assert_eq!(
        properties.correlation_id().as_ref().map(|v| v.as_str()),
        Some("dl")
    );
    assert_eq!(*properties.delivery_mode(), Some(2));
    assert!(
        properties.expiration().is_none(),
        "the dead letter must not expire"
    );
    assert_eq!(header(letter, "cms-event").as_deref(), Some("publish"));
    assert_eq!(
        header(letter, "x-error-code").as_deref(),
        Some("invalid_field")
    );
    assert!(header(letter, "x-error-message").unwrap().contains("keys"));
    assert_eq!(header(letter, "x-job-status").as_deref(), Some("rejected"));
    world.finish().await;
}

#[tokio::test]
async fn cc_header_does_not_loop_dead_letters() {
    let mut world = World::start("cc_loop").await;
    let jobs_queue = world.settings.broker.jobs_queue.clone();
    let mut headers = FieldTable::default();
    headers.insert(
        "CC".into(),
        AMQPValue::FieldArray(vec![AMQPValue::LongString(jobs_queue.as_str().into())].into()),
    );
    let properties = world.client.reply_properties("cc").with_headers(headers);
    let body = br#"{"type": "purge_all", "service_id": "bad-id"}"#;
    world.client.publish(body, properties).await;
    let reply = world.client.reply_for("cc").await;
    assert_eq!(reply.result.status, Status::Rejected);

    let dead = world.dead_letters(1).await;
    assert_eq!(dead.len(), 1);
    assert!(
        header(&dead[0], "CC").is_none(),
        "the copy must not route anywhere else"
    );
    assert!(header(&dead[0], "x-original-cc").is_some());
    let counts = world.stop_and_count().await;
    assert_eq!(counts.jobs, 0, "no copy went back to the jobs queue");
    assert_eq!(counts.dead, 0, "only one dead letter was made");
    world.finish().await;
}
