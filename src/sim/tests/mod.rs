//! End-to-end tests: each starts a simulator on 127.0.0.1 with a free port and talks to it
//! over HTTP with reqwest.

mod auth;
mod chaos;
mod control;
mod limits;
mod purge;
mod services;

use std::net::{Ipv4Addr, SocketAddr};

use reqwest::{Client, RequestBuilder, Response};
use serde_json::Value;

use super::{DEFAULT_TOKEN, SimConfig, Simulator};

const LOOPBACK: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// A running simulator plus one HTTP client, reused so that requests share a connection.
struct Harness {
    simulator: Simulator,
    client: Client,
}

impl std::ops::Deref for Harness {
    type Target = Simulator;

    fn deref(&self) -> &Simulator {
        &self.simulator
    }
}

impl Harness {
    async fn start(config: SimConfig) -> Harness {
        let simulator = Simulator::start(LOOPBACK, config)
            .await
            .expect("simulator starts on a free loopback port");
        // Proxies from the environment are disabled so that requests stay on loopback.
        let client = Client::builder()
            .no_proxy()
            .build()
            .expect("reqwest client builds");
        Harness { simulator, client }
    }

    async fn start_default() -> Harness {
        Self::start(SimConfig::default()).await
    }

    /// Starts a request with the given token, if any.
    fn request(&self, method: reqwest::Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let builder = self
            .client
            .request(method, format!("{}{path}", self.simulator.base_url()));
        match token {
            Some(token) => builder.header("Fastly-Key", token),
            None => builder,
        }
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.request(reqwest::Method::GET, path, Some(DEFAULT_TOKEN))
    }

    fn post(&self, path: &str) -> RequestBuilder {
        self.request(reqwest::Method::POST, path, Some(DEFAULT_TOKEN))
    }

    fn first_service(&self) -> String {
        self.simulator.service_ids()[0].clone()
    }
}

async fn send(builder: RequestBuilder) -> Response {
    builder.send().await.expect("request reaches the simulator")
}

/// Sends the request and returns the status and the body parsed as JSON.
async fn send_json(builder: RequestBuilder) -> (u16, Value) {
    let response = send(builder).await;
    let status = response.status().as_u16();
    let body = response.json().await.expect("reply body is JSON");
    (status, body)
}

fn header<'r>(response: &'r Response, name: &str) -> Option<&'r str> {
    response
        .headers()
        .get(name)
        .map(|value| value.to_str().expect("header value is ASCII"))
}
