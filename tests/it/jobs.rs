//! Every job type through the broker and the simulator, and the result contract.

use fastly_purge_worker::job::Status;
use fastly_purge_worker::sim::SimConfig;
use lapin::BasicProperties;
use serde_json::json;

use crate::world::{TOKEN, World, WorldBuilder};

#[tokio::test]
async fn purge_keys_returns_purge_ids() {
    let mut world = World::start("purge_keys").await;
    let reply = world
        .run(json!({"id": "job-1", "type": "purge_keys", "service_id": "SVC1", "keys": ["a", "b"]}))
        .await;

    let result = &reply.result;
    assert_eq!(result.status, Status::Succeeded, "{}", reply.json);
    assert_eq!(result.job_id.as_deref(), Some("job-1"));
    assert_eq!(result.job_type.as_deref(), Some("purge_keys"));
    assert_eq!(result.account.as_deref(), Some("default"));
    assert_eq!(result.attempts, 1);
    assert!(!result.redelivered);
    assert!(result.finished_at >= result.received_at);
    assert!(reply.json["error"].is_null());
    let output = &reply.json["output"];
    assert_eq!(output["service_id"], "SVC1");
    assert_eq!(output["soft"], false);
    assert!(output["purge_ids"]["a"].is_string());
    assert!(output["purge_ids"]["b"].is_string());

    let requests = world.sim.requests();
    assert_eq!(requests.len(), 2, "tokens/self at start, then one purge");
    let purge = &requests[1];
    assert_eq!(purge.method, "POST");
    assert_eq!(purge.path, "/service/SVC1/purge");
    assert_eq!(purge.token.as_deref(), Some(TOKEN));
    assert!(!purge.soft());
    assert_eq!(purge.surrogate_keys(), ["a", "b"]);
    let user_agent = purge.header("user-agent").unwrap();
    assert!(
        user_agent.starts_with("fastly-purge-worker/"),
        "{user_agent}"
    );
    assert_eq!(world.sim.purged_keys("SVC1").len(), 2);
    world.finish().await;
}

#[tokio::test]
async fn result_properties_follow_the_job() {
    let mut world = World::start("result_properties").await;
    let reply = world
        .run(json!({"type": "purge_keys", "service_id": "SVC1", "keys": ["a"]}))
        .await;
    let properties = &reply.properties;
    assert_eq!(
        properties.content_type().as_ref().map(|v| v.as_str()),
        Some("application/json")
    );
    assert_eq!(
        *properties.delivery_mode(),
        Some(2),
        "results are persistent"
    );
    assert!(properties.correlation_id().is_some());
    world.finish().await;
}

#[tokio::test]
async fn soft_purge_sends_soft_header() {
    let mut world = World::start("soft_purge").await;
    let reply = world
        .run(json!({"type": "purge_keys", "service_id": "SVC1", "keys": ["a"], "soft": true}))
        .await;
    assert_eq!(reply.result.status, Status::Succeeded);
    assert_eq!(reply.json["output"]["soft"], true);
    let purge = world.sim.requests().pop().unwrap();
    assert!(purge.soft());
    assert_eq!(purge.header("fastly-soft-purge"), Some("1"));
    world.finish().await;
}

#[tokio::test]
async fn keys_over_256_split_into_two_requests() {
    let mut world = World::start("split_257").await;
    let keys: Vec<String> = (0..257).map(|i| format!("key-{i}")).collect();
    let reply = world
        .run(json!({"type": "purge_keys", "service_id": "SVC1", "keys": keys}))
        .await;

    assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);
    let purge_ids = reply.json["output"]["purge_ids"].as_object().unwrap();
    assert_eq!(purge_ids.len(), 257);
    let purges = world.sim.requests_to("/service/SVC1/purge");
    assert_eq!(purges.len(), 2);
    let mut sizes: Vec<usize> = purges.iter().map(|r| r.surrogate_keys().len()).collect();
    sizes.sort();
    assert_eq!(sizes, [1, 256]);
    assert_eq!(world.sim.purged_keys("SVC1").len(), 257);
    world.finish().await;
}

#[tokio::test]
async fn duplicate_keys_sent_once() {
    let mut world = World::start("duplicate_keys").await;
    let reply = world
        .run(json!({"type": "purge_keys", "service_id": "SVC1", "keys": ["a", "a", "b"]}))
        .await;
    assert_eq!(reply.result.status, Status::Succeeded);
    let purge = world.sim.requests().pop().unwrap();
    assert_eq!(purge.surrogate_keys(), ["a", "b"]);
    world.finish().await;
}

#[tokio::test]
async fn purge_urls_keeps_encoding_and_query() {
    let mut world = World::start("purge_urls").await;
    let urls = [
        "https://www.example.com/a%2Fb/c.jpg?x=1&y=%41",
        "http://example.com/caf\u{e9}",
    ];
    let reply = world
        .run(json!({"type": "purge_urls", "urls": urls, "soft": true}))
        .await;

    assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);
    let output = &reply.json["output"];
    assert_eq!(output["soft"], true);
    assert!(output["purge_ids"][urls[0]].is_string());
    assert!(output["purge_ids"][urls[1]].is_string());
    let mut paths: Vec<String> = world
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/purge/"))
        .inspect(|r| assert!(r.soft()))
        .map(|r| r.path)
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/purge/example.com/caf%C3%A9",
            "/purge/www.example.com/a%2Fb/c.jpg?x=1&y=%41"
        ]
    );
    world.finish().await;
}

#[tokio::test]
async fn purge_all_calls_purge_all() {
    let mut world = World::start("purge_all").await;
    let reply = world
        .run(json!({"type": "purge_all", "service_id": "SVC1"}))
        .await;
    assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);
    assert_eq!(reply.json["output"], json!({"service_id": "SVC1"}));
    let request = world.sim.requests().pop().unwrap();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/service/SVC1/purge_all");
    assert!(!request.soft());
    world.finish().await;
}

#[tokio::test]
async fn list_services_follows_every_page() {
    let mut builder = WorldBuilder::new("list_all");
    builder.sim = SimConfig {
        services: 45,
        ..builder.sim
    };
    let mut world = builder.start().await;
    let reply = world
        .run(json!({"type": "list_services", "per_page": 20}))
        .await;

    assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);
    let services = reply.json["output"]["services"].as_array().unwrap();
    assert_eq!(services.len(), 45);
    assert_eq!(reply.json["output"]["total"], 45);
    let ids: Vec<&str> = services.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, world.sim.service_ids());
    let pages = world
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/service?"))
        .count();
    assert_eq!(pages, 3);
    world.finish().await;
}

#[tokio::test]
async fn list_services_single_page() {
    let mut builder = WorldBuilder::new("list_page");
    builder.sim = SimConfig {
        services: 45,
        ..builder.sim
    };
    let mut world = builder.start().await;
    let reply = world
        .run(json!({"type": "list_services", "page": 3, "per_page": 20}))
        .await;
    assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);
    assert_eq!(reply.json["output"]["total"], 5);
    world.finish().await;
}

#[tokio::test]
async fn get_service_returns_details() {
    let mut world = World::start("get_service").await;
    let service_id = world.sim.service_ids()[0].clone();
    let reply = world
        .run(json!({"type": "get_service", "service_id": service_id}))
        .await;
    assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);
    let output = &reply.json["output"];
    assert_eq!(output["id"], service_id.as_str());
    assert!(output["version"].is_object());
    assert!(output.get("active_version").is_some());
    let request = world.sim.requests().pop().unwrap();
    assert_eq!(request.path, format!("/service/{service_id}/details"));
    world.finish().await;
}

#[tokio::test]
async fn get_account_reads_user_then_customer() {
    let mut world = World::start("get_account").await;
    let reply = world.run(json!({"type": "get_account"})).await;
    assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);
    let output = &reply.json["output"];
    let customer_id = output["user"]["customer_id"].as_str().unwrap();
    assert_eq!(output["customer"]["id"], customer_id);
    let paths: Vec<String> = world.sim.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        &paths[paths.len() - 2..],
        [
            "/current_user".to_owned(),
            format!("/customer/{customer_id}")
        ]
    );
    world.finish().await;
}

#[tokio::test]
async fn get_token_returns_scopes() {
    let mut world = World::start("get_token").await;
    let reply = world.run(json!({"type": "get_token"})).await;
    assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);
    assert_eq!(reply.json["output"]["scope"], "global");
    assert!(!reply.json.to_string().contains(TOKEN));
    world.finish().await;
}

#[tokio::test]
async fn result_without_reply_to_goes_to_results_queue() {
    let world = World::start("results_queue").await;
    let body = serde_json::to_vec(&json!({"id": "no-reply", "type": "get_token"})).unwrap();
    let properties = BasicProperties::default().with_correlation_id("corr-9".into());
    world.client.publish(&body, properties).await;

    let messages = world.results_queue(1).await;
    assert_eq!(messages.len(), 1);
    let result: serde_json::Value = serde_json::from_slice(&messages[0].data).unwrap();
    assert_eq!(result["job_id"], "no-reply");
    assert_eq!(result["status"], "succeeded");
    assert_eq!(
        messages[0]
            .properties
            .correlation_id()
            .as_ref()
            .map(|v| v.as_str()),
        Some("corr-9")
    );
    world.finish().await;
}

#[tokio::test]
async fn job_id_falls_back_to_message_id() {
    let mut world = World::start("message_id").await;
    let body = serde_json::to_vec(&json!({"type": "get_token"})).unwrap();
    let properties = world
        .client
        .reply_properties("corr-m")
        .with_message_id("msg-42".into());
    world.client.publish(&body, properties).await;
    let reply = world.client.reply_for("corr-m").await;
    assert_eq!(reply.result.job_id.as_deref(), Some("msg-42"));
    world.finish().await;
}

#[tokio::test]
async fn gone_reply_to_falls_back_to_results_queue() {
    let world = World::start("gone_reply_to").await;
    let body = serde_json::to_vec(&json!({"id": "orphan", "type": "get_token"})).unwrap();
    let properties = BasicProperties::default().with_reply_to("no.such.queue.for.test".into());
    world.client.publish(&body, properties).await;
    let messages = world.results_queue(1).await;
    assert_eq!(messages.len(), 1);
    let result: serde_json::Value = serde_json::from_slice(&messages[0].data).unwrap();
    assert_eq!(result["job_id"], "orphan");
    world.finish().await;
}

#[tokio::test]
async fn named_account_uses_its_token() {
    let mut world = WorldBuilder::new("named_account")
        .account("shop", &["purge_select"])
        .start()
        .await;
    let reply = world
        .run(json!({"type": "purge_keys", "account": "shop", "service_id": "SVC1", "keys": ["k"]}))
        .await;
    assert_eq!(reply.result.status, Status::Succeeded, "{}", reply.json);
    assert_eq!(reply.result.account.as_deref(), Some("shop"));
    let purge = world.sim.requests().pop().unwrap();
    assert_eq!(purge.token.as_deref(), Some("test-token-shop"));
    world.finish().await;
}
