//! Service and account read tests: paging, service shapes, current user and customer.

use serde_json::json;

use super::*;
use crate::sim::{DEFAULT_CUSTOMER_ID, DEFAULT_USER_ID};

fn links(response: &Response) -> Vec<(String, String)> {
    let Some(link) = header(response, "link") else {
        return Vec::new();
    };
    link.split(", ")
        .map(|part| {
            let (url, rel) = part.split_once("; rel=").expect("link part has a rel");
            let url = url.trim_start_matches('<').trim_end_matches('>');
            (rel.trim_matches('"').to_string(), url.to_string())
        })
        .collect()
}

#[tokio::test]
async fn list_pages_link_to_each_other() {
    let sim = Harness::start(SimConfig {
        services: 45,
        ..SimConfig::default()
    })
    .await;
    let host = sim.addr().to_string();
    let page_url = |page: u32| format!("http://{host}/service?page={page}&per_page=20");

    let first = send(sim.get("/service?page=1&per_page=20")).await;
    let first_links = links(&first);
    let first_items: Value = first.json().await.unwrap();
    let second = send(sim.get("/service?page=2&per_page=20")).await;
    let second_links = links(&second);
    let third = send(sim.get("/service?page=3&per_page=20")).await;
    let third_links = links(&third);
    let third_items: Value = third.json().await.unwrap();

    let expected = |pairs: &[(&str, u32)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(rel, page)| (rel.to_string(), page_url(*page)))
            .collect()
    };
    assert_eq!(first_links, expected(&[("last", 3), ("next", 2)]));
    assert_eq!(
        second_links,
        expected(&[("last", 3), ("next", 3), ("prev", 1), ("first", 1)])
    );
    assert_eq!(third_links, expected(&[("prev", 2), ("first", 1)]));
    assert_eq!(first_items.as_array().unwrap().len(), 20);
    assert_eq!(third_items.as_array().unwrap().len(), 5);
    assert_eq!(first_items[0]["id"], sim.service_ids()[0].as_str());
    assert_eq!(third_items[4]["id"], sim.service_ids()[44].as_str());
}

#[tokio::test]
async fn list_links_keep_sort_parameters() {
    let sim = Harness::start(SimConfig {
        services: 5,
        ..SimConfig::default()
    })
    .await;

    let response = send(sim.get("/service?sort=created&direction=descend&per_page=2")).await;
    let page_links = links(&response);
    let items: Value = response.json().await.unwrap();

    let host = sim.addr();
    assert_eq!(
        page_links[0],
        (
            "last".to_string(),
            format!("http://{host}/service?direction=descend&page=3&per_page=2&sort=created")
        )
    );
    assert_eq!(items[0]["id"], sim.service_ids()[4].as_str());
}

#[tokio::test]
async fn single_page_has_no_link_header() {
    let sim = Harness::start_default().await;

    let response = send(sim.get("/service")).await;

    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), Some("application/json"));
    assert!(header(&response, "link").is_none());
    let items: Value = response.json().await.unwrap();
    assert_eq!(items.as_array().unwrap().len(), 3);
    let item = &items[0];
    for field in [
        "id",
        "name",
        "type",
        "customer_id",
        "comment",
        "created_at",
        "updated_at",
        "deleted_at",
        "paused",
        "version",
        "versions",
    ] {
        assert!(item.get(field).is_some(), "list item has {field}");
    }
    assert_eq!(item["customer_id"], DEFAULT_CUSTOMER_ID);
    assert_eq!(item["id"].as_str().unwrap().len(), 22);
    assert_eq!(item["deleted_at"], json!(null));
}

#[tokio::test]
async fn per_page_out_of_range_gets_400() {
    let sim = Harness::start_default().await;

    for query in ["per_page=0", "per_page=1001", "per_page=x", "page=0"] {
        let (status, body) = send_json(sim.get(&format!("/service?{query}"))).await;

        assert_eq!(status, 400, "{query}");
        assert_eq!(body["msg"], "Bad request", "{query}");
    }
    let (status, _) = send_json(sim.get("/service?per_page=1000")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn get_service_has_no_top_level_version() {
    let sim = Harness::start_default().await;
    let service_id = sim.first_service();

    let (status, body) = send_json(sim.get(&format!("/service/{service_id}"))).await;

    assert_eq!(status, 200);
    assert_eq!(body["id"], service_id.as_str());
    assert!(body.get("version").is_none());
    assert!(
        body["versions"]
            .as_array()
            .is_some_and(|versions| !versions.is_empty())
    );
    assert_eq!(body["versions"][0]["service_id"], service_id.as_str());
}

#[tokio::test]
async fn details_has_version_and_active_version() {
    let sim = Harness::start(SimConfig {
        services: 4,
        ..SimConfig::default()
    })
    .await;
    let ids = sim.service_ids();

    let (status, body) = send_json(sim.get(&format!("/service/{}/details", ids[0]))).await;
    let (_, never_active) = send_json(sim.get(&format!("/service/{}/details", ids[3]))).await;
    let (_, chosen) = send_json(sim.get(&format!("/service/{}/details?version=1", ids[2]))).await;

    assert_eq!(status, 200);
    let version = &body["version"];
    assert_eq!(version["number"], 1);
    assert_eq!(version["service_id"], ids[0].as_str());
    for collection in [
        "domains",
        "backends",
        "healthchecks",
        "acls",
        "snippets",
        "vcls",
    ] {
        assert!(version[collection].is_array(), "version has {collection}");
    }
    assert_eq!(version["settings"]["general.default_ttl"], 3600);
    assert_eq!(body["active_version"]["number"], 1);
    assert_eq!(body["active_version"]["active"], true);
    assert_eq!(never_active["active_version"], json!(null));
    assert!(never_active["version"].is_object());
    assert_eq!(chosen["version"]["number"], 1);
    assert_eq!(chosen["active_version"]["number"], 2);
}

#[tokio::test]
async fn unknown_service_gets_400() {
    let sim = Harness::start_default().await;

    let (get_status, get_body) = send_json(sim.get("/service/unknownService0000000001")).await;
    let (details_status, _) = send_json(sim.get("/service/unknownService0000000001/details")).await;
    let (version_status, _) = send_json(sim.get(&format!(
        "/service/{}/details?version=99",
        sim.first_service()
    )))
    .await;

    assert_eq!(get_status, 400);
    assert_eq!(get_body["msg"], "Bad request");
    assert!(
        get_body["detail"]
            .as_str()
            .unwrap()
            .contains("unknownService0000000001")
    );
    assert_eq!(details_status, 400);
    assert_eq!(version_status, 400);
}

#[tokio::test]
async fn search_finds_service_by_name() {
    let sim = Harness::start_default().await;

    let (status, body) = send_json(sim.get("/service/search?name=api-example-com")).await;
    let (missing_status, missing) = send_json(sim.get("/service/search?name=nothing")).await;

    assert_eq!(status, 200);
    assert_eq!(body["id"], sim.service_ids()[1].as_str());
    assert_eq!(missing_status, 404);
    assert_eq!(
        missing,
        json!({ "msg": "Record not found", "details": "Cannot find service" })
    );
}

#[tokio::test]
async fn current_user_and_customer() {
    let sim = Harness::start_default().await;

    let (user_status, user) = send_json(sim.get("/current_user")).await;
    let (customer_status, customer) =
        send_json(sim.get(&format!("/customer/{DEFAULT_CUSTOMER_ID}"))).await;
    let (other_status, other) = send_json(sim.get("/customer/someoneElse000000000000")).await;
    let (_, current_customer) = send_json(sim.get("/current_customer")).await;

    assert_eq!(user_status, 200);
    assert_eq!(user["id"], DEFAULT_USER_ID);
    assert_eq!(user["customer_id"], DEFAULT_CUSTOMER_ID);
    for field in [
        "name",
        "login",
        "role",
        "locked",
        "two_factor_auth_enabled",
        "limit_services",
        "last_active_at",
    ] {
        assert!(user.get(field).is_some(), "current_user has {field}");
    }
    assert_eq!(customer_status, 200);
    assert_eq!(customer["id"], DEFAULT_CUSTOMER_ID);
    assert_eq!(customer["owner_id"], DEFAULT_USER_ID);
    for field in [
        "name",
        "pricing_plan",
        "billing_network_type",
        "force_2fa",
        "force_sso",
        "created_at",
        "updated_at",
    ] {
        assert!(customer.get(field).is_some(), "customer has {field}");
    }
    assert_eq!(other_status, 403);
    assert_eq!(other["msg"], "Forbidden");
    assert_eq!(current_customer, customer);
}
