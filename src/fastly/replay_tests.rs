//! The client against recorded Fastly replies: a loopback server answers each request with the
//! recording for its path (status, headers and body as recorded), and the client's parsing of
//! every endpoint the worker uses is checked against it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use serde_json::Value;
use url::Url;

use super::tests::fixture;
use super::*;
use crate::config::Settings;
use crate::job::{PurgeUrl, ServiceId};

/// Serves recordings by request path and query; 599 for a path without one.
async fn replay_server(names: &[&str]) -> Url {
    let mut by_path: HashMap<String, Value> = HashMap::new();
    for name in names {
        let recording = fixture(name);
        let path = recording["path"].as_str().unwrap().to_owned();
        by_path.insert(path, recording);
    }
    let by_path = Arc::new(by_path);
    let app = axum::Router::new().fallback(move |request: Request<Body>| {
        let by_path = Arc::clone(&by_path);
        async move {
            let path = request
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            let Some(recording) = by_path.get(&path) else {
                return Response::builder()
                    .status(599)
                    .body(Body::from(format!("no recording for {path}")))
                    .unwrap();
            };
            let status = recording["status"].as_u64().unwrap() as u16;
            let mut response = Response::builder().status(StatusCode::from_u16(status).unwrap());
            for (name, value) in recording["response_headers"].as_object().unwrap() {
                let lower = name.to_ascii_lowercase();
                // Hop-by-hop and length headers describe the recorded transfer, not this one.
                if ![
                    "content-length",
                    "transfer-encoding",
                    "connection",
                    "status",
                ]
                .contains(&lower.as_str())
                {
                    response = response.header(name.as_str(), value.as_str().unwrap());
                }
            }
            response
                .body(Body::from(serde_json::to_vec(&recording["body"]).unwrap()))
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Url::parse(&format!("http://{address}")).unwrap()
}

fn client(base: Url) -> (FastlyClient, Account) {
    let settings = Settings::defaults();
    let account = Account::new("default", secrecy::SecretString::from("t".to_owned())).unwrap();
    (FastlyClient::new(base, &settings.fastly).unwrap(), account)
}

fn service(id: &str) -> ServiceId {
    ServiceId::parse(id).unwrap()
}

#[tokio::test]
async fn bulk_purge_reply_without_content_type_parsed() {
    let (client, account) = client(replay_server(&["purge_by_keys.json"]).await);
    let keys = ["foo".to_owned(), "bar".to_owned(), "baz".to_owned()];
    let reply = client
        .purge_keys(&account, &service("kKJb5bOFI47uHeBVluGfX1"), &keys, false)
        .await
        .unwrap();
    assert_eq!(reply.value["foo"], "4151-1635861748-11035");
    assert_eq!(reply.value.len(), 3);
    assert_eq!(
        reply.rate_limit,
        RateLimit::default(),
        "key purges carry no rate-limit headers"
    );
}

#[tokio::test]
async fn bulk_purge_reply_missing_a_key_rejected() {
    let (client, account) = client(replay_server(&["purge_by_keys.json"]).await);
    let keys = ["foo".to_owned(), "other".to_owned()];
    let err = client
        .purge_keys(&account, &service("kKJb5bOFI47uHeBVluGfX1"), &keys, false)
        .await
        .unwrap_err();
    assert!(matches!(err, FastlyError::InvalidReply(_)), "{err}");
}

#[tokio::test]
async fn purge_all_reply_and_rate_limit_parsed() {
    let (client, account) = client(replay_server(&["purge_all.json"]).await);
    let reply = client
        .purge_all(&account, &service("kKJb5bOFI47uHeBVluGfX1"))
        .await
        .unwrap();
    assert!(reply.rate_limit.remaining.is_some());
    assert!(reply.rate_limit.reset.is_some());
}

#[tokio::test]
async fn single_purge_reply_gives_purge_id() {
    // The recorded URL purge used an older form of the path; its reply shape is current.
    let mut recording = fixture("purge_url.legacy-2017.json");
    recording["path"] = Value::from("/purge/releases.hashicorp.com/");
    let server = replay_fixture_value(recording).await;
    let (client, account) = client(server);
    let url = PurgeUrl::parse("https://releases.hashicorp.com/").unwrap();
    let reply = client.purge_url(&account, &url, false).await.unwrap();
    assert_eq!(reply.value, "17722-1500509140-5286");
}

/// Serves one recording, possibly edited by the test.
async fn replay_fixture_value(recording: Value) -> Url {
    let dir = std::env::temp_dir().join(format!("fpw-replay-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let name = "edited.json";
    std::fs::write(dir.join(name), serde_json::to_vec(&recording).unwrap()).unwrap();
    let path = recording["path"].as_str().unwrap().to_owned();
    let recording = Arc::new(recording);
    let app = axum::Router::new().fallback(move |request: Request<Body>| {
        let recording = Arc::clone(&recording);
        let path = path.clone();
        async move {
            let status = if request.uri().path() == path {
                200
            } else {
                599
            };
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&recording["body"]).unwrap()))
                .unwrap()
        }
    });
    std::fs::remove_dir_all(dir).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Url::parse(&format!("http://{address}")).unwrap()
}

#[tokio::test]
async fn service_pages_followed_through_link_headers() {
    let (client, account) = client(
        replay_server(&[
            "services_list.page1.json",
            "services_list.page2.json",
            "services_list.page3.json",
        ])
        .await,
    );
    let mut path = "/service?direction=descend&page=1&per_page=100&sort=created".to_owned();
    let mut pages = 0;
    let mut services = 0;
    loop {
        let reply = client.list_services_page(&account, &path).await.unwrap();
        pages += 1;
        services += reply.value.services.len();
        match reply.value.next {
            Some(next) => path = next,
            None => break,
        }
    }
    assert_eq!(
        pages, 3,
        "the absolute api.fastly.com links are followed on the replay server"
    );
    assert!(services > 200, "{services}");
}

#[tokio::test]
async fn details_user_and_token_parsed() {
    let (client, account) = client(
        replay_server(&[
            "service_details.json",
            "current_user.json",
            "tokens_self.json",
        ])
        .await,
    );
    let details = client
        .service_details(&account, &service("FPkmJNp1fH8CnWbdi21Wf3"))
        .await
        .unwrap();
    assert!(details.value["version"].is_object());
    let user = client.current_user(&account).await.unwrap();
    assert_eq!(user.value["customer_id"], "51MumwLiSJyFTWhtbByYgR");
    let token = client.token_self(&account).await.unwrap();
    assert_eq!(
        TokenInfo::from_json(&token.value).unwrap().scopes,
        ["global"]
    );
}

#[tokio::test]
async fn recorded_errors_become_status_errors_with_message() {
    let (client, account) = client(replay_server(&["error_404_record_not_found.json"]).await);
    // Reuse a read of the client to reach the recorded path.
    let err = client
        .get_json(
            &account,
            "/resources/stores/config/DOES-NOT-EXIST",
            "config store",
        )
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), Some(404));
    assert_eq!(err.code(), crate::job::ErrorCode::FastlyNotFound);
    assert!(err.to_string().contains("Record not found"), "{err}");
}
