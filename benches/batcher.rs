//! Criterion benchmark of the batching state machine alone: one-key jobs in, sealed bulk
//! requests out, over 10 services with soft and hard purges. No I/O, no broker, no HTTP.
//!
//! Run it with `cargo bench --bench batcher`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fastly_purge_worker::batch::{Next, QueueKey, State};
use fastly_purge_worker::job::ServiceId;
use tokio::time::Instant;

const JOBS: usize = 10_000;

/// Submits `JOBS` one-key jobs, seals every batch as it fills, and completes it.
fn run_batches(services: &[ServiceId], account: &Arc<str>) -> usize {
    let mut state: State<String> = State::new(256, Duration::from_millis(100));
    let queue = QueueKey {
        account: Arc::clone(account),
        write: false,
    };
    let now = Instant::now();
    let mut receivers = Vec::with_capacity(JOBS);
    let mut requests = 0;
    for job in 0..JOBS {
        let service = &services[job % services.len()];
        let soft = job % 4 == 0;
        let (_, receiver, filled) =
            state.submit_keys(account, service, soft, vec![format!("key-{job}")], now);
        receivers.push(receiver);
        if filled {
            requests += drain(&mut state, &queue, now);
        }
    }
    // What is left goes out when the linger time has passed.
    requests += drain(&mut state, &queue, now + Duration::from_secs(1));
    assert!(
        receivers
            .iter_mut()
            .all(|receiver| receiver.try_recv().is_ok())
    );
    requests
}

fn drain(state: &mut State<String>, queue: &QueueKey, now: Instant) -> usize {
    let mut sealed = 0;
    while let Next::Ready(id) = state.next_ready(queue, now) {
        let batch = state.seal(id);
        let ids: BTreeMap<String, String> = batch
            .keys
            .iter()
            .map(|key| (key.clone(), "4151-1-1".to_owned()))
            .collect();
        state.complete_keys(batch.id, Ok(ids), 1);
        sealed += 1;
    }
    sealed
}

fn batcher(criterion: &mut Criterion) {
    let services: Vec<ServiceId> = (0..10)
        .map(|index| ServiceId::parse(&format!("Service{index}")).unwrap())
        .collect();
    let account: Arc<str> = Arc::from("default");
    let mut group = criterion.benchmark_group("batcher");
    group.throughput(Throughput::Elements(JOBS as u64));
    group.bench_function("one_key_jobs_to_bulk_requests", |bench| {
        bench.iter(|| black_box(run_batches(&services, &account)))
    });
    group.finish();
}

criterion_group!(benches, batcher);
criterion_main!(benches);
