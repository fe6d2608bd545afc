//! The worker under chaos: 10,000 jobs of mixed types against a simulator that sends random
//! 5xx replies, resets connections, hangs past the request timeout, replies slowly and runs a
//! 429 storm. Every job must end with exactly one result: success, or failure only where
//! Fastly's reply was permanent.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use fastly_purge_worker::job::{ErrorCode, JobResult, Status};
use fastly_purge_worker::sim::{AfterHang, Chaos, Storm};
use lapin::BasicProperties;
use serde_json::{Value, json};

use crate::world::{World, WorldBuilder, header};

const JOBS: usize = 10_000;
/// Maximum time of the whole run, from the world's start to its end.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// A service id that the simulator does not hold: `get_service` for it gets a permanent 400.
const MISSING_SERVICE: &str = "chaosMissingService00001";

/// A job to publish, and how it must end.
struct PlannedJob {
    id: String,
    body: Value,
    /// The error code of a job that must fail, because Fastly rejects it for good.
    fails_with: Option<ErrorCode>,
}

/// Plans job `index`: half purge_keys with 1 to 3 keys, a fifth purge_urls with 1 or 2 URLs,
/// a tenth purge_all, and a fifth get_service, of which one in ten names a missing service.
fn plan_job(index: usize, services: &[String]) -> PlannedJob {
    let id = format!("chaos-{index:04}");
    let service_id = &services[index % services.len()];
    let mut fails_with = None;
    let body = match index % 10 {
        0..=4 => {
            let keys: Vec<String> = (0..=index % 3)
                .map(|n| format!("key-{index}-{n}"))
                .collect();
            json!({"id": id, "type": "purge_keys", "service_id": service_id, "keys": keys})
        }
        5 | 6 => {
            let urls: Vec<String> = (0..=index % 2)
                .map(|n| format!("https://www.example.com/chaos/{index}/{n}"))
                .collect();
            json!({"id": id, "type": "purge_urls", "urls": urls})
        }
        7 => json!({"id": id, "type": "purge_all", "service_id": service_id}),
        _ if index % 50 == 9 => {
            fails_with = Some(ErrorCode::FastlyBadRequest);
            json!({"id": id, "type": "get_service", "service_id": MISSING_SERVICE})
        }
        _ => json!({"id": id, "type": "get_service", "service_id": service_id}),
    };
    PlannedJob {
        id,
        body,
        fails_with,
    }
}

/// Builds a world whose simulator runs chaos mode. Its worker settings let transient failures
/// succeed on a later attempt: a 300 ms request timeout below the 600 ms hangs, short retry
/// delays, many deliveries, and budgets far above what 10,000 jobs use.
async fn chaos_world() -> World {
    let mut builder = WorldBuilder::new("chaos");
    let settings = &mut builder.settings;
    settings.fastly.request_timeout_ms = 300;
    settings.redelivery.max_attempts = 6;
    settings.redelivery.max_deferrals = 20;
    settings.redelivery.delays_ms = vec![20, 40, 80];
    for quota in [
        &mut settings.limits.purge,
        &mut settings.limits.write,
        &mut settings.limits.read,
    ] {
        quota.per_hour = 10_000_000;
        quota.burst = 10_000;
    }

    builder.sim.write_limit = 10_000_000;
    builder.sim.purge_limit = 100_000_000;
    builder.sim.chaos = Chaos {
        error_rate: 0.05,
        reset_rate: 0.03,
        hang_rate: 0.03,
        hang: Duration::from_millis(600),
        after_hang: AfterHang::Reply,
        slow_rate: 0.05,
        slow: Duration::from_millis(100),
        // Publishing the jobs takes several seconds, so the storm falls among them.
        storm: Some(Storm {
            start_after: Duration::from_millis(500),
            length: Duration::from_secs(1),
            every: None,
            purges: true,
        }),
        // The seed fixes the draws, but not which request gets which draw: the worker's
        // requests run concurrently.
        seed: Some(2024),
    };
    builder.start().await
}

/// Reads results from the results queue until every job has one or the time is up, and
/// returns them by job id.
async fn collect_results(world: &World, deadline: Instant) -> BTreeMap<String, Vec<JobResult>> {
    let mut results: BTreeMap<String, Vec<JobResult>> = BTreeMap::new();
    let mut received = 0;
    while received < JOBS && Instant::now() < deadline {
        for delivery in world.results_queue(JOBS - received).await {
            let result: JobResult = serde_json::from_slice(&delivery.data).unwrap_or_else(|err| {
                panic!(
                    "the result does not match the contract ({err}): {}",
                    String::from_utf8_lossy(&delivery.data)
                )
            });
            let id = result.job_id.clone().unwrap_or_default();
            results.entry(id).or_default().push(result);
            received += 1;
        }
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_ends_once_under_chaos() {
    // Heavy enough to disturb timed waits of other tests, so it takes the broker alone.
    let _broker = crate::serial().await;
    tokio::time::timeout(RUN_TIMEOUT, run_under_chaos())
        .await
        .unwrap_or_else(|_| panic!("the chaos run did not finish within {RUN_TIMEOUT:?}"));
}

async fn run_under_chaos() {
    let started = Instant::now();
    let mut world = chaos_world().await;
    let services = world.sim.service_ids();
    let jobs: Vec<PlannedJob> = (0..JOBS).map(|index| plan_job(index, &services)).collect();

    // Without reply_to, results go to the results queue, where duplicates stay visible.
    for job in &jobs {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_correlation_id(job.id.as_str().into());
        world
            .client
            .publish(&serde_json::to_vec(&job.body).unwrap(), properties)
            .await;
    }
    let published_in = started.elapsed();
    let results = collect_results(&world, started + RUN_TIMEOUT - Duration::from_secs(15)).await;
    let collected_in = started.elapsed();

    let planned: BTreeSet<&str> = jobs.iter().map(|job| job.id.as_str()).collect();
    let missing: Vec<&str> = planned
        .iter()
        .filter(|id| !results.contains_key(**id))
        .copied()
        .collect();
    let duplicated: Vec<(&String, usize)> = results
        .iter()
        .filter(|(_, copies)| copies.len() > 1)
        .map(|(id, copies)| (id, copies.len()))
        .collect();
    let unknown: Vec<&String> = results
        .keys()
        .filter(|id| !planned.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} jobs have no result: {missing:?}",
        missing.len()
    );
    assert!(
        duplicated.is_empty(),
        "jobs with several results: {duplicated:?}"
    );
    assert!(
        unknown.is_empty(),
        "results for unknown job ids: {unknown:?}"
    );

    for job in &jobs {
        let result = &results[&job.id][0];
        let error = result.error.as_ref();
        match job.fails_with {
            None => assert_eq!(
                result.status,
                Status::Succeeded,
                "job {} ({}) did not succeed: {error:?}",
                job.id,
                job.body["type"]
            ),
            Some(code) => {
                assert_eq!(result.status, Status::Failed, "job {}", job.id);
                assert_eq!(error.map(|error| error.code), Some(code), "job {}", job.id);
                assert_eq!(error.and_then(|error| error.http_status), Some(400));
            }
        }
    }

    let failed: BTreeMap<&str, &str> = jobs
        .iter()
        .filter(|job| job.fails_with.is_some())
        .map(|job| {
            let message = &results[&job.id][0].error.as_ref().unwrap().message;
            (job.id.as_str(), message.as_str())
        })
        .collect();
    let dead = world.dead_letters(failed.len()).await;
    let dead_messages: BTreeMap<String, String> = dead
        .iter()
        .map(|letter| {
            (
                header(letter, "x-job-id").unwrap_or_default(),
                header(letter, "x-error-message").unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(dead.len(), failed.len(), "dead letters: {dead_messages:?}");
    for (id, message) in &failed {
        assert_eq!(
            dead_messages.get(*id).map(String::as_str),
            Some(*message),
            "dead letter of job {id}"
        );
    }

    // Every success is backed by a purge the simulator made: of the key itself, or a
    // purge_all of its service that the worker sent while the key waited for its batch.
    let purged_all: BTreeSet<String> = world
        .sim
        .requests()
        .into_iter()
        .filter(|request| request.status == 200 && request.path.ends_with("/purge_all"))
        .map(|request| request.path)
        .collect();
    for job in jobs.iter().filter(|job| job.fails_with.is_none()) {
        match job.body["type"].as_str() {
            Some("purge_keys") => {
                let service_id = job.body["service_id"].as_str().unwrap();
                let purged = world.sim.purged_keys(service_id);
                let output = &results[&job.id][0].output;
                let covered = output
                    .as_ref()
                    .and_then(|output| output["purged_by_purge_all"].as_array())
                    .cloned()
                    .unwrap_or_default();
                for key in job.body["keys"].as_array().unwrap() {
                    let by_purge_all = covered.contains(key)
                        && purged_all.contains(&format!("/service/{service_id}/purge_all"));
                    assert!(
                        purged.contains(key.as_str().unwrap()) || by_purge_all,
                        "job {} succeeded but key {key} was not purged: {output:?}",
                        job.id
                    );
                }
            }
            Some("purge_urls") => {
                let purged = world.sim.purged_urls();
                for url in job.body["urls"].as_array().unwrap() {
                    let host_and_path = url.as_str().unwrap().trim_start_matches("https://");
                    assert!(
                        purged.contains(host_and_path),
                        "job {} succeeded but {url} was not purged",
                        job.id
                    );
                }
            }
            _ => {}
        }
    }

    // The only permanent errors are those planned: a hang that ends in a reply can repeat
    // one, but no other request may get a 400.
    let missing_service_path = format!("/service/{MISSING_SERVICE}/");
    let unplanned_400s: Vec<String> = world
        .sim
        .requests()
        .into_iter()
        .filter(|request| request.status == 400 && !request.path.starts_with(&missing_service_path))
        .map(|request| format!("{} {}", request.method, request.path))
        .collect();
    assert!(
        unplanned_400s.is_empty(),
        "unplanned 400 replies: {unplanned_400s:?}"
    );

    let stats = world.sim.stats();
    let chaos = &stats.chaos;
    assert!(chaos.server_errors > 0, "no random 5xx: {stats:?}");
    assert!(chaos.resets > 0, "no reset: {stats:?}");
    assert!(chaos.hangs > 0, "no hang: {stats:?}");
    assert!(chaos.slow_replies > 0, "no slow reply: {stats:?}");
    assert!(chaos.storm_rejections > 0, "no storm 429: {stats:?}");

    let counts = world.stop_and_count().await;
    let late_results = world
        .client
        .depth(&world.settings.broker.results_queue)
        .await;
    assert_eq!(counts.jobs, 0, "jobs left unsettled");
    assert_eq!(counts.dead, 0, "dead letters beyond the failed jobs");
    assert_eq!(
        late_results, 0,
        "results that arrived after every job had one"
    );

    eprintln!(
        "chaos run: {JOBS} jobs published in {published_in:?}, all results in \
         {collected_in:?}, {} Fastly requests, {chaos:?}, by status {:?}",
        stats.requests, stats.by_status
    );
    world.finish().await;
}
