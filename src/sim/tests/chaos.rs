//! Chaos mode tests: random 5xx replies, connection resets, hangs, slow replies, 429 storms,
//! seeded draws and the `/_sim/chaos` control endpoints. Delays are 200 ms or less.

use std::error::Error as _;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::sim::{AfterHang, Chaos, ChaosKind, Storm};

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

async fn start_with(chaos: Chaos) -> Harness {
    Harness::start(SimConfig {
        chaos,
        ..SimConfig::default()
    })
    .await
}

/// Sends a raw HTTP/1.1 request for `/service` on a new connection and returns what reading
/// the reply gave: the bytes read before end of stream, or the read error.
async fn raw_get_service(sim: &Simulator) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(sim.addr()).await?;
    let request = format!(
        "GET /service HTTP/1.1\r\nHost: api.fastly.com\r\nFastly-Key: {DEFAULT_TOKEN}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await?;
    Ok(reply)
}

/// Tells whether an error, or any error in its source chain, is an I/O error of `kind`.
fn has_io_error(error: &reqwest::Error, kind: std::io::ErrorKind) -> bool {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == kind
        {
            return true;
        }
        source = cause.source();
    }
    false
}

#[tokio::test]
async fn server_errors_are_recorded_and_counted() {
    let sim = start_with(Chaos {
        error_rate: 1.0,
        ..Chaos::default()
    })
    .await;

    for _ in 0..5 {
        let status = send(sim.get("/service")).await.status().as_u16();
        assert!([500, 502, 503].contains(&status), "got {status}");
    }
    let unauthenticated = send(sim.request(Method::GET, "/service", None)).await;

    assert_eq!(unauthenticated.status(), 401);
    let requests = sim.requests();
    assert_eq!(requests[0].chaos, [ChaosKind::ServerError]);
    assert!(requests[5].chaos.is_empty(), "a 401 gets no random 5xx");
    assert_eq!(sim.stats().chaos.server_errors, 5);
}

#[tokio::test]
async fn reset_closes_connection_without_reply() {
    let sim = start_with(Chaos {
        reset_rate: 1.0,
        ..Chaos::default()
    })
    .await;

    let error = sim
        .get("/service")
        .send()
        .await
        .expect_err("a reset connection gives no reply");
    let raw = raw_get_service(&sim).await;

    assert!(!error.is_timeout(), "{error:?}");
    assert!(error.status().is_none(), "{error:?}");
    assert!(
        has_io_error(&error, std::io::ErrorKind::ConnectionReset),
        "expected connection reset by peer, got {error:?}"
    );
    let raw_error = raw.expect_err("reading a reset connection fails");
    assert_eq!(raw_error.kind(), std::io::ErrorKind::ConnectionReset);
    let requests = sim.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].status, 0);
    assert_eq!(requests[0].chaos, [ChaosKind::Reset]);
    let stats = sim.stats();
    assert_eq!(stats.chaos.resets, 2);
    assert_eq!(stats.by_status.get(&0), Some(&2));

    sim.set_chaos(Chaos::default());
    assert_eq!(send(sim.get("/service")).await.status(), 200);
}

#[tokio::test]
async fn reset_skips_the_endpoint() {
    let sim = start_with(Chaos {
        reset_rate: 1.0,
        ..Chaos::default()
    })
    .await;
    let service_id = sim.first_service();

    let sent = sim
        .post(&format!("/service/{service_id}/purge/key-1"))
        .send()
        .await;

    assert!(sent.is_err());
    assert!(sim.purged_keys(&service_id).is_empty());
    assert_eq!(sim.stats().purges, 0);
}

#[tokio::test]
async fn hang_then_close_outlasts_client_timeout() {
    let hang = ms(150);
    let sim = start_with(Chaos {
        hang_rate: 1.0,
        hang,
        after_hang: AfterHang::Close,
        ..Chaos::default()
    })
    .await;

    let error = sim
        .get("/service")
        .timeout(ms(50))
        .send()
        .await
        .expect_err("the client times out during the hang");
    let started = Instant::now();
    let raw = raw_get_service(&sim).await;
    let waited = started.elapsed();

    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(
        raw.expect("a closed connection reads as end of stream"),
        b""
    );
    assert!(
        waited >= hang,
        "closed after {waited:?}, before the hang of {hang:?}"
    );
    let requests = sim.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].status, 0);
    assert_eq!(requests[1].chaos, [ChaosKind::Hang]);
    assert_eq!(sim.stats().chaos.hangs, 2);
}

#[tokio::test]
async fn hang_then_reply_answers_late() {
    let hang = ms(100);
    let sim = start_with(Chaos {
        hang_rate: 1.0,
        hang,
        after_hang: AfterHang::Reply,
        ..Chaos::default()
    })
    .await;
    let service_id = sim.first_service();

    let started = Instant::now();
    let late = send(sim.post(&format!("/service/{service_id}/purge_all"))).await;
    let waited = started.elapsed();
    let timed_out = sim
        .post(&format!("/service/{service_id}/purge/key-1"))
        .timeout(ms(30))
        .send()
        .await;

    assert_eq!(late.status(), 200);
    assert!(
        waited >= hang,
        "replied after {waited:?}, before the hang of {hang:?}"
    );
    assert!(timed_out.expect_err("the client gives up").is_timeout());
    // The purge ran before the hang, so it took effect although the client saw a timeout.
    assert!(sim.purged_keys(&service_id).contains("key-1"));
    let requests = sim.requests();
    assert_eq!(requests[0].status, 200);
    assert_eq!(requests[0].chaos, [ChaosKind::Hang]);
    assert_eq!(requests[1].status, 200);
    assert_eq!(sim.stats().chaos.hangs, 2);
}

#[tokio::test]
async fn slow_reply_adds_delay() {
    let slow = ms(100);
    let sim = start_with(Chaos {
        slow_rate: 1.0,
        slow,
        ..Chaos::default()
    })
    .await;

    let started = Instant::now();
    let status = send(sim.get("/service")).await.status();
    let waited = started.elapsed();
    sim.set_error_rate(1.0);
    let failed = send(sim.get("/service")).await.status();

    assert_eq!(status, 200);
    assert!(waited >= slow, "replied after {waited:?}, before {slow:?}");
    assert!(failed.is_server_error(), "got {failed}");
    let requests = sim.requests();
    assert_eq!(requests[0].chaos, [ChaosKind::Slow]);
    assert_eq!(requests[1].chaos, [ChaosKind::Slow, ChaosKind::ServerError]);
    let stats = sim.stats();
    assert_eq!(stats.chaos.slow_replies, 2);
    assert_eq!(stats.chaos.server_errors, 1);
}

#[tokio::test]
async fn storm_rejects_writes_until_it_ends() {
    let length = ms(200);
    let sim = Harness::start_default().await;
    let service_id = sim.first_service();
    let purge_all = format!("/service/{service_id}/purge_all");
    sim.set_chaos(Chaos {
        storm: Some(Storm {
            start_after: Duration::ZERO,
            length,
            every: None,
            purges: false,
        }),
        ..Chaos::default()
    });
    let storm_started = Instant::now();

    let limited = send(sim.post(&purge_all)).await;
    let limited_status = limited.status();
    let remaining = header(&limited, "fastly-ratelimit-remaining").map(str::to_string);
    let reset: i64 = header(&limited, "fastly-ratelimit-reset")
        .expect("a storm 429 has a reset")
        .parse()
        .unwrap();
    let body: Value = limited.json().await.unwrap();
    let key_purge = send(sim.post(&format!("/service/{service_id}/purge/key-1"))).await;
    let read = send(sim.get("/service")).await;
    tokio::time::sleep(length.saturating_sub(storm_started.elapsed()) + ms(10)).await;
    let after_storm = send(sim.post(&purge_all)).await;

    let now = chrono::Utc::now().timestamp();
    assert_eq!(limited_status, 429);
    assert_eq!(remaining.as_deref(), Some("0"));
    assert!(
        (now - 1..=now + 1).contains(&reset),
        "reset {reset} is the storm's end, within a second of now {now}"
    );
    assert_eq!(body["msg"], crate::sim::reply::RATE_LIMIT_MESSAGE);
    assert_eq!(key_purge.status(), 200, "purges are outside this storm");
    assert_eq!(read.status(), 200);
    assert_eq!(after_storm.status(), 200);
    let requests = sim.requests();
    assert_eq!(requests[0].chaos, [ChaosKind::Storm]);
    let stats = sim.stats();
    assert_eq!(stats.chaos.storm_rejections, 1);
    assert_eq!(stats.rate_limited, 1);
    assert_eq!(
        stats.writes, 1,
        "a storm 429 is not charged to the write limit"
    );
}

#[tokio::test]
async fn storm_with_purges_rejects_purges() {
    let sim = Harness::start_default().await;
    let service_id = sim.first_service();
    sim.set_chaos(Chaos {
        storm: Some(Storm {
            start_after: Duration::ZERO,
            length: Duration::from_secs(60),
            every: None,
            purges: true,
        }),
        ..Chaos::default()
    });

    let key_purge = send(sim.post(&format!("/service/{service_id}/purge/key-1"))).await;
    let url_purge = send(sim.post("/purge/www.example.com/a")).await;
    let read = send(sim.get("/service")).await;
    sim.set_chaos(Chaos::default());
    let after_chaos_off = send(sim.post(&format!("/service/{service_id}/purge/key-1"))).await;

    assert_eq!(key_purge.status(), 429);
    assert_eq!(header(&key_purge, "fastly-ratelimit-remaining"), Some("0"));
    assert_eq!(url_purge.status(), 429);
    assert_eq!(read.status(), 200);
    assert_eq!(after_chaos_off.status(), 200);
}

#[tokio::test]
async fn storm_waits_for_its_start() {
    let sim = start_with(Chaos {
        storm: Some(Storm {
            start_after: Duration::from_secs(60),
            length: Duration::from_secs(1),
            every: None,
            purges: true,
        }),
        ..Chaos::default()
    })
    .await;

    let status = send(sim.post(&format!("/service/{}/purge_all", sim.first_service())))
        .await
        .status();

    assert_eq!(status, 200);
    assert_eq!(sim.stats().chaos.storm_rejections, 0);
}

/// Sends 40 requests one after another and returns each status, 0 for no reply.
async fn statuses_of_sequential_requests(chaos: Chaos) -> Vec<u16> {
    let sim = start_with(chaos).await;
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let status = match sim.get("/service").send().await {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        };
        statuses.push(status);
    }
    let recorded: Vec<u16> = sim
        .requests()
        .iter()
        .map(|request| request.status)
        .collect();
    assert_eq!(recorded, statuses, "the log records what the client saw");
    statuses
}

#[tokio::test]
async fn seed_repeats_faults() {
    let chaos = Chaos {
        error_rate: 0.3,
        reset_rate: 0.2,
        slow_rate: 0.2,
        slow: ms(1),
        seed: Some(11),
        ..Chaos::default()
    };

    let first = statuses_of_sequential_requests(chaos.clone()).await;
    let second = statuses_of_sequential_requests(chaos).await;

    assert_eq!(first, second);
    assert!(first.contains(&0), "no reset in {first:?}");
    assert!(first.contains(&200), "no success in {first:?}");
    assert!(
        first.iter().any(|status| *status >= 500),
        "no 5xx in {first:?}"
    );
}

#[tokio::test]
async fn control_endpoints_set_and_show_chaos() {
    let sim = Harness::start_default().await;
    let control = |method: Method, path: &str| sim.request(method, path, None);

    let set = send(control(Method::POST, "/_sim/chaos").json(&json!({
        "reset_rate": 1.0,
        "storm": { "length_ms": 1000, "every_ms": 5000 },
        "seed": 3
    })))
    .await;
    let (shown_status, shown) = send_json(control(Method::GET, "/_sim/chaos")).await;
    let (stats_status, _) = send_json(control(Method::GET, "/_sim/stats")).await;
    let fastly = sim.get("/service").send().await;
    let out_of_range =
        send(control(Method::POST, "/_sim/chaos").json(&json!({ "reset_rate": 2 }))).await;
    let unknown_field =
        send(control(Method::POST, "/_sim/chaos").json(&json!({ "resets": 1 }))).await;
    let off = send(control(Method::POST, "/_sim/chaos").json(&json!({}))).await;
    let after_off = send(sim.get("/service")).await;

    assert_eq!(set.status(), 204);
    assert_eq!(shown_status, 200);
    assert_eq!(shown["reset_rate"], 1.0);
    assert_eq!(shown["storm"]["length_ms"], 1000);
    assert_eq!(shown["storm"]["every_ms"], 5000);
    assert_eq!(shown["seed"], 3);
    assert_eq!(stats_status, 200, "control paths get no chaos faults");
    assert!(fastly.is_err(), "Fastly paths are reset");
    assert_eq!(out_of_range.status(), 400);
    assert!(out_of_range.text().await.unwrap().contains("reset_rate"));
    assert_eq!(unknown_field.status(), 400);
    assert_eq!(off.status(), 204);
    assert_eq!(sim.chaos(), Chaos::default());
    assert_eq!(after_off.status(), 200);
}

#[tokio::test]
async fn error_rate_setters_share_one_rate() {
    let sim = Harness::start(SimConfig {
        error_rate: 0.25,
        ..SimConfig::default()
    })
    .await;
    let slow = Chaos {
        slow_rate: 1.0,
        slow: ms(1),
        ..Chaos::default()
    };

    let from_config = sim.chaos().error_rate;
    sim.set_chaos(slow.clone());
    sim.set_error_rate(0.5);

    assert_eq!(from_config, 0.25);
    assert_eq!(
        sim.chaos(),
        Chaos {
            error_rate: 0.5,
            ..slow
        }
    );
}

#[tokio::test]
async fn stop_ends_hanging_requests() {
    let sim = start_with(Chaos {
        hang_rate: 1.0,
        hang: Duration::from_secs(30),
        ..Chaos::default()
    })
    .await;
    let Harness { simulator, client } = sim;
    let url = format!("{}/service", simulator.base_url());
    let hanging = tokio::spawn(async move { client.get(url).send().await });
    while simulator.requests().is_empty() {
        tokio::time::sleep(ms(5)).await;
    }

    let started = Instant::now();
    simulator.stop().await;
    let stopped_in = started.elapsed();

    // Well below the 5 s that stop waits for connections, and the 30 s hang.
    assert!(
        stopped_in < Duration::from_secs(2),
        "stop took {stopped_in:?}"
    );
    assert!(
        hanging.await.unwrap().is_err(),
        "the hanging request got no reply"
    );
}

#[tokio::test]
async fn invalid_chaos_is_rejected_at_start() {
    let cases = [
        SimConfig {
            chaos: Chaos {
                reset_rate: 1.5,
                ..Chaos::default()
            },
            ..SimConfig::default()
        },
        SimConfig {
            error_rate: 0.2,
            chaos: Chaos {
                error_rate: 0.3,
                ..Chaos::default()
            },
            ..SimConfig::default()
        },
    ];

    for config in cases {
        let error = Simulator::start(LOOPBACK, config)
            .await
            .expect_err("the config is invalid");
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{error}");
    }
}

#[tokio::test]
#[should_panic(expected = "invalid chaos settings")]
async fn set_chaos_panics_on_invalid_settings() {
    let sim = Harness::start_default().await;

    sim.set_chaos(Chaos {
        slow_rate: 0.5,
        ..Chaos::default()
    });
}
