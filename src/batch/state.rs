//! The batching state machine: which keys wait in which batch, when a batch is ready, what a
//! sealed batch sends, and which jobs a finished request resolves. No I/O and no clock of its
//! own (callers pass `now`), so it is tested and benchmarked alone.
//!
//! A batch is one future Fastly request: up to `max_keys` distinct surrogate keys of one
//! (account, service, soft) group, or one purge_all of an (account, service). It is open while
//! it accepts work, ready when it is full or its linger time has passed, and sealed when a
//! dispatcher takes it to send. A purge_all that is sealed takes every unsealed key batch of
//! its service along as riders: its success purges their keys too.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::job::ServiceId;

/// Identifies a job waiting in the batcher.
pub type JobId = u64;
/// Identifies a batch.
pub type BatchId = u64;

/// The kind of request a batch becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchKind {
    /// A bulk surrogate-key purge, soft or hard.
    Keys { soft: bool },
    /// A purge_all of the service.
    PurgeAll,
}

impl BatchKind {
    /// Returns whether this kind counts against the write budget rather than the purge budget.
    pub fn is_write(self) -> bool {
        self == BatchKind::PurgeAll
    }
}

/// The outcome of a job's surrogate keys.
#[derive(Debug, Clone, PartialEq)]
pub struct KeysResult<E> {
    /// Keys purged by a bulk request, with their purge ids.
    pub purge_ids: BTreeMap<String, String>,
    /// Keys covered by a purge_all of the service sent after they arrived.
    pub by_purge_all: Vec<String>,
    /// Keys whose request failed, with the first such error.
    pub failed: Vec<String>,
    pub error: Option<E>,
    /// Most attempts any of the job's requests needed.
    pub attempts: u32,
}

impl<E> Default for KeysResult<E> {
    fn default() -> Self {
        KeysResult {
            purge_ids: BTreeMap::new(),
            by_purge_all: Vec::new(),
            failed: Vec::new(),
            error: None,
            attempts: 0,
        }
    }
}

/// The outcome of a job that waited in the batcher.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution<E> {
    Keys(KeysResult<E>),
    PurgeAll {
        result: Result<(), E>,
        attempts: u32,
    },
}

/// A sealed batch: the request to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Sealed {
    pub id: BatchId,
    pub account: Arc<str>,
    pub service: ServiceId,
    pub kind: BatchKind,
    /// The distinct keys of a key batch, in arrival order; empty for a purge_all.
    pub keys: Vec<String>,
}

/// When the next batch of a queue can be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// This batch is ready now.
    Ready(BatchId),
    /// None is ready; the oldest becomes ready at this instant.
    At(Instant),
    /// The queue is empty.
    Idle,
}

/// The key of a dispatcher queue: one dispatcher per account and budget class.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueKey {
    pub account: Arc<str>,
    pub write: bool,
}

#[derive(Debug)]
struct Batch {
    account: Arc<str>,
    service: ServiceId,
    kind: BatchKind,
    keys: Vec<String>,
    /// Jobs waiting on each key; for a purge_all, on the empty key.
    waiters: HashMap<String, Vec<JobId>>,
    opened_at: Instant,
    /// Sealed as riders of this purge_all batch.
    riders: Vec<BatchId>,
    /// Taken by a dispatcher (or by a purge_all as a rider): its keys can no longer change.
    sealed: bool,
}

struct PendingJob<E> {
    remaining: usize,
    resolution: Resolution<E>,
    reply: oneshot::Sender<Resolution<E>>,
    /// The batches the job waits on, each with its key (an empty key for a purge_all).
    places: Vec<(BatchId, String)>,
}

/// Every unsealed and in-flight batch, and every job waiting on one.
pub struct State<E> {
    max_keys: usize,
    linger: Duration,
    /// Linger while the worker is behind (see [`State::set_behind`]): latency is then set by
    /// the queue anyway, and fuller requests save Fastly budget.
    backlog_linger: Duration,
    /// Whether the worker is behind: jobs wait in the queue, unconsumed.
    behind: bool,
    /// Set at shutdown: every batch is ready at once.
    flushing: bool,
    /// Jobs that can wait here at once (the window: consumers x prefetch). When nearly that
    /// many wait, no new job can arrive to fill a batch, so waiting longer would only stall the
    /// worker.
    max_waiting: usize,
    next_id: u64,
    batches: HashMap<BatchId, Batch>,
    /// The key batch that accepts new keys, per (account, service, soft).
    open_keys: HashMap<(Arc<str>, ServiceId, bool), BatchId>,
    /// The purge_all batch that accepts new jobs, per (account, service).
    open_all: HashMap<(Arc<str>, ServiceId), BatchId>,
    /// Unsealed batches of each dispatcher, oldest first.
    queues: HashMap<QueueKey, VecDeque<BatchId>>,
    jobs: HashMap<JobId, PendingJob<E>>,
}

impl<E: Clone> State<E> {
    pub fn new(max_keys: usize, linger: Duration) -> State<E> {
        State::with_backlog_linger(max_keys, linger, linger, usize::MAX)
    }

    /// Creates a state that lingers `backlog_linger` instead of `linger` while the worker is
    /// behind, unless about `max_waiting` jobs already wait.
    pub fn with_backlog_linger(
        max_keys: usize,
        linger: Duration,
        backlog_linger: Duration,
        max_waiting: usize,
    ) -> State<E> {
        State {
            max_keys: max_keys.max(1),
            linger,
            backlog_linger: backlog_linger.max(linger),
            behind: false,
            flushing: false,
            max_waiting: max_waiting.max(1),
            next_id: 1,
            batches: HashMap::new(),
            open_keys: HashMap::new(),
            open_all: HashMap::new(),
            queues: HashMap::new(),
            jobs: HashMap::new(),
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Adds a job's keys (distinct) to the open batches of its group, opening new ones as
    /// batches fill. Returns the job id, the receiver of its resolution, and the dispatcher
    /// queues that gained a ready batch.
    pub fn submit_keys(
        &mut self,
        account: &Arc<str>,
        service: &ServiceId,
        soft: bool,
        keys: Vec<String>,
        now: Instant,
    ) -> (JobId, oneshot::Receiver<Resolution<E>>, bool) {
        let job = self.next_id();
        let (reply, receiver) = oneshot::channel();
        let mut places = Vec::with_capacity(keys.len());
        let remaining = keys.len();
        let group = (Arc::clone(account), service.clone(), soft);
        let mut filled = false;
        for key in keys {
            let batch_id = match self.open_keys.get(&group) {
                Some(id) => *id,
                None => self.open_batch(account, service, BatchKind::Keys { soft }, now),
            };
            let batch = self.batches.get_mut(&batch_id).expect("open batches exist");
            match batch.waiters.get_mut(&key) {
                Some(jobs) => jobs.push(job),
                None => {
                    batch.keys.push(key.clone());
                    batch.waiters.insert(key.clone(), vec![job]);
                }
            }
            places.push((batch_id, key));
            if batch.keys.len() >= self.max_keys {
                // Full: it waits for its dispatcher, and the next key opens a new batch.
                self.open_keys.remove(&group);
                filled = true;
            }
        }
        self.jobs.insert(
            job,
            PendingJob {
                remaining,
                resolution: Resolution::Keys(KeysResult::default()),
                reply,
                places,
            },
        );
        (job, receiver, filled)
    }

    /// Adds a purge_all job to the open purge_all batch of its service.
    pub fn submit_purge_all(
        &mut self,
        account: &Arc<str>,
        service: &ServiceId,
        now: Instant,
    ) -> (JobId, oneshot::Receiver<Resolution<E>>) {
        let job = self.next_id();
        let (reply, receiver) = oneshot::channel();
        let group = (Arc::clone(account), service.clone());
        let batch_id = match self.open_all.get(&group) {
            Some(id) => *id,
            None => self.open_batch(account, service, BatchKind::PurgeAll, now),
        };
        let batch = self.batches.get_mut(&batch_id).expect("open batches exist");
        batch.waiters.entry(String::new()).or_default().push(job);
        self.jobs.insert(
            job,
            PendingJob {
                remaining: 1,
                resolution: Resolution::PurgeAll {
                    result: Ok(()),
                    attempts: 0,
                },
                reply,
                places: vec![(batch_id, String::new())],
            },
        );
        (job, receiver)
    }

    fn open_batch(
        &mut self,
        account: &Arc<str>,
        service: &ServiceId,
        kind: BatchKind,
        now: Instant,
    ) -> BatchId {
        let id = self.next_id();
        self.batches.insert(
            id,
            Batch {
                account: Arc::clone(account),
                service: service.clone(),
                kind,
                keys: Vec::new(),
                waiters: HashMap::new(),
                opened_at: now,
                riders: Vec::new(),
                sealed: false,
            },
        );
        match kind {
            BatchKind::Keys { soft } => {
                self.open_keys
                    .insert((Arc::clone(account), service.clone(), soft), id);
            }
            BatchKind::PurgeAll => {
                self.open_all
                    .insert((Arc::clone(account), service.clone()), id);
            }
        }
        self.queues
            .entry(QueueKey {
                account: Arc::clone(account),
                write: kind.is_write(),
            })
            .or_default()
            .push_back(id);
        id
    }

    /// Returns the dispatcher queue a job's batches go to.
    pub fn queue_of(account: &Arc<str>, kind: BatchKind) -> QueueKey {
        QueueKey {
            account: Arc::clone(account),
            write: kind.is_write(),
        }
    }

    /// Finds the batch a dispatcher should seal next: the oldest batch that is full or has
    /// waited its linger time.
    pub fn next_ready(&self, queue: &QueueKey, now: Instant) -> Next {
        let Some(order) = self.queues.get(queue) else {
            return Next::Idle;
        };
        // Nine tenths of the window: deliveries being settled also hold a place in it.
        let window_full = self.jobs.len() >= self.max_waiting - self.max_waiting / 10;
        let linger = if window_full || self.flushing {
            Duration::ZERO
        } else if self.behind {
            self.backlog_linger
        } else {
            self.linger
        };
        let mut earliest: Option<Instant> = None;
        for id in order {
            let batch = &self.batches[id];
            let due = batch.opened_at + linger;
            let full = batch.keys.len() >= self.max_keys;
            if full || due <= now {
                return Next::Ready(*id);
            }
            earliest = Some(earliest.map_or(due, |at| at.min(due)));
        }
        earliest.map_or(Next::Idle, Next::At)
    }

    /// Seals a batch for sending. A purge_all takes the unsealed key batches of its service
    /// along; they are resolved by its outcome.
    pub fn seal(&mut self, id: BatchId) -> Sealed {
        self.unqueue(id);
        let batch = &self.batches[&id];
        let (account, service, kind) = (
            Arc::clone(&batch.account),
            batch.service.clone(),
            batch.kind,
        );
        let mut riders = Vec::new();
        if kind == BatchKind::PurgeAll {
            // Soft and hard key batches share their account's purge queue.
            let queue = QueueKey {
                account: Arc::clone(&account),
                write: false,
            };
            let candidates: Vec<BatchId> = self
                .queues
                .get(&queue)
                .map(|order| order.iter().copied().collect())
                .unwrap_or_default();
            for rider in candidates {
                if self.batches[&rider].service == service {
                    self.unqueue(rider);
                    riders.push(rider);
                }
            }
        }
        for rider in &riders {
            if let Some(rider) = self.batches.get_mut(rider) {
                rider.sealed = true;
            }
        }
        let batch = self.batches.get_mut(&id).expect("sealed batches exist");
        batch.sealed = true;
        batch.riders = riders;
        Sealed {
            id,
            account,
            service,
            kind,
            keys: batch.keys.clone(),
        }
    }

    /// Removes a batch from its dispatcher queue and from the open maps.
    fn unqueue(&mut self, id: BatchId) {
        let batch = &self.batches[&id];
        let queue = Self::queue_of(&batch.account, batch.kind);
        if let Some(order) = self.queues.get_mut(&queue) {
            order.retain(|queued| *queued != id);
            if order.is_empty() {
                self.queues.remove(&queue);
            }
        }
        match batch.kind {
            BatchKind::Keys { soft } => {
                let group = (Arc::clone(&batch.account), batch.service.clone(), soft);
                if self.open_keys.get(&group) == Some(&id) {
                    self.open_keys.remove(&group);
                }
            }
            BatchKind::PurgeAll => {
                let group = (Arc::clone(&batch.account), batch.service.clone());
                if self.open_all.get(&group) == Some(&id) {
                    self.open_all.remove(&group);
                }
            }
        }
    }

    /// Resolves the jobs of a finished key batch: purge ids on success, the keys as failed
    /// on error.
    pub fn complete_keys(
        &mut self,
        id: BatchId,
        result: Result<BTreeMap<String, String>, E>,
        attempts: u32,
    ) {
        let Some(mut batch) = self.batches.remove(&id) else {
            return;
        };
        for key in &batch.keys {
            for job in batch.waiters.remove(key).unwrap_or_default() {
                self.resolve_key(job, key, &result, attempts, false);
            }
        }
    }

    /// Resolves a finished purge_all: its jobs, and its riders' keys. When it failed, the
    /// riders go back to their queue, ready to be sent as key purges.
    pub fn complete_purge_all(&mut self, id: BatchId, result: Result<(), E>, attempts: u32) {
        let Some(batch) = self.batches.remove(&id) else {
            return;
        };
        for job in batch.waiters.into_values().flatten() {
            let Some(pending) = self.jobs.get_mut(&job) else {
                continue;
            };
            if let Resolution::PurgeAll {
                result: job_result,
                attempts: job_attempts,
            } = &mut pending.resolution
            {
                *job_result = result.clone();
                *job_attempts = attempts;
            }
            self.finish_one(job);
        }

        for rider in batch.riders {
            if result.is_ok() {
                let Some(mut rider_batch) = self.batches.remove(&rider) else {
                    continue;
                };
                let ok: Result<BTreeMap<String, String>, E> = Ok(BTreeMap::new());
                for key in &rider_batch.keys {
                    for job in rider_batch.waiters.remove(key).unwrap_or_default() {
                        self.resolve_key(job, key, &ok, attempts, true);
                    }
                }
            } else {
                self.requeue(rider);
            }
        }
    }

    /// Puts a rider batch back at the front of its queue.
    fn requeue(&mut self, id: BatchId) {
        let Some(batch) = self.batches.get_mut(&id) else {
            return;
        };
        batch.sealed = false;
        let queue = Self::queue_of(&batch.account, batch.kind);
        self.queues.entry(queue).or_default().push_front(id);
    }

    fn resolve_key(
        &mut self,
        job: JobId,
        key: &str,
        result: &Result<BTreeMap<String, String>, E>,
        attempts: u32,
        by_purge_all: bool,
    ) {
        let Some(pending) = self.jobs.get_mut(&job) else {
            // The job gave up waiting; its keys were purged anyway.
            return;
        };
        if let Resolution::Keys(keys) = &mut pending.resolution {
            keys.attempts = keys.attempts.max(attempts);
            match result {
                Ok(_) if by_purge_all => keys.by_purge_all.push(key.to_owned()),
                Ok(ids) => match ids.get(key) {
                    Some(purge_id) => {
                        keys.purge_ids.insert(key.to_owned(), purge_id.clone());
                    }
                    None => keys.failed.push(key.to_owned()),
                },
                Err(err) => {
                    keys.failed.push(key.to_owned());
                    keys.error.get_or_insert_with(|| err.clone());
                }
            }
        }
        self.finish_one(job);
    }

    fn finish_one(&mut self, job: JobId) {
        let Some(pending) = self.jobs.get_mut(&job) else {
            return;
        };
        pending.remaining = pending.remaining.saturating_sub(1);
        if pending.remaining == 0 {
            let pending = self.jobs.remove(&job).expect("present");
            // The receiver is gone when the job stopped waiting.
            let _ = pending.reply.send(pending.resolution);
        }
    }

    /// Makes every batch ready at once, for a shutdown that must not wait for lingering keys.
    pub fn set_flushing(&mut self, flushing: bool) {
        self.flushing = flushing;
    }

    /// Records whether the worker is behind, which switches to the backlog linger.
    pub fn set_behind(&mut self, behind: bool) {
        self.behind = behind;
    }

    /// Takes a job out that stopped waiting, and returns what it had got so far (purge ids of
    /// finished batches, errors). Its keys leave the batches not yet sealed, and a batch left
    /// without any key or job is dropped, so nothing is sent for a job that is no longer there.
    /// Keys in sealed batches are purged anyway, and a job with any of them in flight counts
    /// at least one attempt, because a request was sent for it.
    pub fn withdraw(&mut self, job: JobId) -> Option<Resolution<E>> {
        let mut pending = self.jobs.remove(&job)?;
        let mut in_flight = false;
        for (batch_id, key) in &pending.places {
            let Some(batch) = self.batches.get_mut(batch_id) else {
                continue;
            };
            if batch.sealed {
                in_flight = true;
                continue;
            }
            if let Some(jobs) = batch.waiters.get_mut(key) {
                jobs.retain(|waiting| *waiting != job);
                if jobs.is_empty() {
                    batch.waiters.remove(key);
                    batch.keys.retain(|kept| kept != key);
                }
            }
            if batch.waiters.is_empty() {
                self.unqueue(*batch_id);
                self.batches.remove(batch_id);
            }
        }
        if in_flight {
            let attempts = match &mut pending.resolution {
                Resolution::Keys(result) => &mut result.attempts,
                Resolution::PurgeAll { attempts, .. } => attempts,
            };
            *attempts = (*attempts).max(1);
        }
        Some(pending.resolution)
    }

    /// Returns the number of jobs waiting.
    pub fn waiting_jobs(&self) -> usize {
        self.jobs.len()
    }

    /// Returns the number of batches not yet finished, sealed or not.
    pub fn batches(&self) -> usize {
        self.batches.len()
    }

    /// Returns the dispatcher queues that have unsealed batches.
    pub fn busy_queues(&self) -> impl Iterator<Item = &QueueKey> {
        self.queues.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestState = State<String>;

    const LINGER: Duration = Duration::from_millis(100);

    fn account() -> Arc<str> {
        Arc::from("default")
    }

    fn service(id: &str) -> ServiceId {
        ServiceId::parse(id).unwrap()
    }

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|k| k.to_string()).collect()
    }

    fn queue(write: bool) -> QueueKey {
        QueueKey {
            account: account(),
            write,
        }
    }

    fn ids_for(sealed: &Sealed) -> BTreeMap<String, String> {
        sealed
            .keys
            .iter()
            .map(|key| (key.clone(), format!("id-{key}")))
            .collect()
    }

    #[test]
    fn keys_of_concurrent_jobs_share_one_batch() {
        let now = Instant::now();
        let mut state = TestState::new(256, LINGER);
        let (_, mut first, _) =
            state.submit_keys(&account(), &service("S1"), false, keys(&["a", "b"]), now);
        let (_, mut second, _) =
            state.submit_keys(&account(), &service("S1"), false, keys(&["b", "c"]), now);

        assert_eq!(state.next_ready(&queue(false), now), Next::At(now + LINGER));
        let Next::Ready(id) = state.next_ready(&queue(false), now + LINGER) else {
            panic!("the batch is due after the linger time");
        };
        let sealed = state.seal(id);
        assert_eq!(sealed.keys, ["a", "b", "c"], "b is sent once");
        state.complete_keys(id, Ok(ids_for(&sealed)), 1);

        let Resolution::Keys(first) = first.try_recv().unwrap() else {
            panic!()
        };
        let Resolution::Keys(second) = second.try_recv().unwrap() else {
            panic!()
        };
        assert_eq!(first.purge_ids.len(), 2);
        assert_eq!(
            second.purge_ids["b"], "id-b",
            "both jobs get the shared key's purge id"
        );
        assert_eq!(first.purge_ids["b"], "id-b");
        assert_eq!(state.waiting_jobs(), 0);
        assert_eq!(state.batches(), 0);
    }

    #[test]
    fn full_batch_ready_at_once_and_rest_split() {
        let now = Instant::now();
        let mut state = TestState::new(3, LINGER);
        let (_, mut job, filled) = state.submit_keys(
            &account(),
            &service("S1"),
            false,
            keys(&["a", "b", "c", "d"]),
            now,
        );
        assert!(filled);

        let Next::Ready(first) = state.next_ready(&queue(false), now) else {
            panic!("a full batch is ready before its linger time");
        };
        let first = state.seal(first);
        assert_eq!(first.keys, ["a", "b", "c"]);
        assert_eq!(state.next_ready(&queue(false), now), Next::At(now + LINGER));
        let Next::Ready(second) = state.next_ready(&queue(false), now + LINGER) else {
            panic!()
        };
        let second = state.seal(second);
        assert_eq!(second.keys, ["d"]);

        state.complete_keys(first.id, Ok(ids_for(&first)), 1);
        assert!(job.try_recv().is_err(), "the job waits for all its batches");
        state.complete_keys(second.id, Ok(ids_for(&second)), 2);
        let Resolution::Keys(result) = job.try_recv().unwrap() else {
            panic!()
        };
        assert_eq!(result.purge_ids.len(), 4);
        assert_eq!(result.attempts, 2);
    }

    #[test]
    fn soft_and_hard_kept_apart() {
        let now = Instant::now();
        let mut state = TestState::new(256, LINGER);
        state.submit_keys(&account(), &service("S1"), false, keys(&["a"]), now);
        state.submit_keys(&account(), &service("S1"), true, keys(&["a"]), now);
        let later = now + LINGER;
        let mut sealed = Vec::new();
        while let Next::Ready(id) = state.next_ready(&queue(false), later) {
            sealed.push(state.seal(id));
        }
        assert_eq!(sealed.len(), 2);
        let kinds: Vec<BatchKind> = sealed.iter().map(|s| s.kind).collect();
        assert!(kinds.contains(&BatchKind::Keys { soft: true }));
        assert!(kinds.contains(&BatchKind::Keys { soft: false }));
    }

    #[test]
    fn services_and_accounts_kept_apart() {
        let now = Instant::now();
        let mut state = TestState::new(256, LINGER);
        let other: Arc<str> = Arc::from("other");
        state.submit_keys(&account(), &service("S1"), false, keys(&["a"]), now);
        state.submit_keys(&account(), &service("S2"), false, keys(&["a"]), now);
        state.submit_keys(&other, &service("S1"), false, keys(&["a"]), now);
        let later = now + LINGER;
        let mut count = 0;
        while let Next::Ready(id) = state.next_ready(&queue(false), later) {
            state.seal(id);
            count += 1;
        }
        assert_eq!(count, 2);
        let other_queue = QueueKey {
            account: other,
            write: false,
        };
        assert!(matches!(
            state.next_ready(&other_queue, later),
            Next::Ready(_)
        ));
    }

    #[test]
    fn unsealed_batch_keeps_growing() {
        let now = Instant::now();
        let mut state = TestState::new(256, LINGER);
        state.submit_keys(&account(), &service("S1"), false, keys(&["a"]), now);
        let late = now + LINGER * 3;
        let Next::Ready(id) = state.next_ready(&queue(false), late) else {
            panic!()
        };
        // Keys arriving while the dispatcher waits for budget still join the batch.
        state.submit_keys(&account(), &service("S1"), false, keys(&["b"]), late);
        assert_eq!(state.seal(id).keys, ["a", "b"]);
        state.submit_keys(&account(), &service("S1"), false, keys(&["c"]), late);
        assert_eq!(
            state.next_ready(&queue(false), late),
            Next::At(late + LINGER),
            "a sealed batch takes no keys"
        );
    }

    #[test]
    fn failed_batch_fails_only_its_keys() {
        let now = Instant::now();
        let mut state = TestState::new(2, LINGER);
        let (_, mut job, _) = state.submit_keys(
            &account(),
            &service("S1"),
            false,
            keys(&["a", "b", "c"]),
            now,
        );
        let (_, mut bystander, _) =
            state.submit_keys(&account(), &service("S2"), false, keys(&["z"]), now);

        let later = now + LINGER;
        let mut sealed = Vec::new();
        while let Next::Ready(id) = state.next_ready(&queue(false), later) {
            sealed.push(state.seal(id));
        }
        for batch in &sealed {
            if batch.keys == ["a", "b"] {
                state.complete_keys(batch.id, Err("503".to_owned()), 3);
            } else {
                state.complete_keys(batch.id, Ok(ids_for(batch)), 1);
            }
        }

        let Resolution::Keys(result) = job.try_recv().unwrap() else {
            panic!()
        };
        assert_eq!(result.failed, ["a", "b"]);
        assert_eq!(result.purge_ids.keys().collect::<Vec<_>>(), ["c"]);
        assert_eq!(result.error.as_deref(), Some("503"));

        let Resolution::Keys(other) = bystander.try_recv().unwrap() else {
            panic!()
        };
        assert!(
            other.error.is_none(),
            "a job without keys in the failed batch succeeds"
        );
    }

    #[test]
    fn purge_all_jobs_coalesce() {
        let now = Instant::now();
        let mut state = TestState::new(256, LINGER);
        let (_, mut first) = state.submit_purge_all(&account(), &service("S1"), now);
        let (_, mut second) = state.submit_purge_all(&account(), &service("S1"), now);
        let (_, mut other) = state.submit_purge_all(&account(), &service("S2"), now);
        let later = now + LINGER;
        let mut sealed = Vec::new();
        while let Next::Ready(id) = state.next_ready(&queue(true), later) {
            sealed.push(state.seal(id));
        }
        assert_eq!(sealed.len(), 2, "one request per service");
        for batch in &sealed {
            state.complete_purge_all(batch.id, Ok(()), 1);
        }
        for receiver in [&mut first, &mut second, &mut other] {
            let resolution = receiver.try_recv().unwrap();
            assert_eq!(
                resolution,
                Resolution::PurgeAll {
                    result: Ok(()),
                    attempts: 1
                }
            );
        }
    }

    #[test]
    fn purge_all_covers_pending_keys_of_its_service() {
        let now = Instant::now();
        let mut state = TestState::new(256, LINGER);
        let (_, mut keys_job, _) =
            state.submit_keys(&account(), &service("S1"), true, keys(&["a", "b"]), now);
        let (_, mut elsewhere, _) =
            state.submit_keys(&account(), &service("S2"), false, keys(&["a"]), now);
        let (_, mut purge_all) = state.submit_purge_all(&account(), &service("S1"), now);

        let Next::Ready(id) = state.next_ready(&queue(true), now + LINGER) else {
            panic!()
        };
        let sealed = state.seal(id);
        assert_eq!(sealed.kind, BatchKind::PurgeAll);
        state.complete_purge_all(sealed.id, Ok(()), 1);

        let Resolution::Keys(result) = keys_job.try_recv().unwrap() else {
            panic!()
        };
        assert_eq!(result.by_purge_all, ["a", "b"]);
        assert!(result.purge_ids.is_empty());
        assert!(purge_all.try_recv().is_ok());
        assert!(
            elsewhere.try_recv().is_err(),
            "other services still wait for their purge"
        );
        let Next::Ready(left) = state.next_ready(&queue(false), now + LINGER) else {
            panic!()
        };
        assert_eq!(state.seal(left).service, service("S2"));
    }

    #[test]
    fn keys_after_purge_all_sealed_are_not_covered() {
        let now = Instant::now();
        let mut state = TestState::new(256, LINGER);
        state.submit_purge_all(&account(), &service("S1"), now);
        let Next::Ready(id) = state.next_ready(&queue(true), now + LINGER) else {
            panic!()
        };
        let sealed = state.seal(id);
        let (_, mut late, _) = state.submit_keys(
            &account(),
            &service("S1"),
            false,
            keys(&["a"]),
            now + LINGER,
        );
        state.complete_purge_all(sealed.id, Ok(()), 1);
        assert!(
            late.try_recv().is_err(),
            "a key that arrived after the purge_all was sent waits for its own purge"
        );
    }

    #[test]
    fn failed_purge_all_sends_riders_as_key_purges() {
        let now = Instant::now();
        let mut state = TestState::new(256, LINGER);
        let (_, mut keys_job, _) =
            state.submit_keys(&account(), &service("S1"), false, keys(&["a"]), now);
        let (_, mut purge_all) = state.submit_purge_all(&account(), &service("S1"), now);
        let Next::Ready(id) = state.next_ready(&queue(true), now + LINGER) else {
            panic!()
        };
        let sealed = state.seal(id);
        state.complete_purge_all(sealed.id, Err("429".to_owned()), 1);

        let resolution = purge_all.try_recv().unwrap();
        assert_eq!(
            resolution,
            Resolution::PurgeAll {
                result: Err("429".to_owned()),
                attempts: 1
            }
        );
        assert!(keys_job.try_recv().is_err());
        let Next::Ready(rider) = state.next_ready(&queue(false), now + LINGER) else {
            panic!("the rider is ready again");
        };
        let rider = state.seal(rider);
        assert_eq!(rider.keys, ["a"]);
        state.complete_keys(rider.id, Ok(ids_for(&rider)), 1);
        assert!(keys_job.try_recv().is_ok());
    }

    #[test]
    fn withdrawn_job_leaves_unsealed_batches() {
        let now = Instant::now();
        let mut state = TestState::new(256, LINGER);
        let (job, _receiver, _) =
            state.submit_keys(&account(), &service("S1"), false, keys(&["a", "b"]), now);
        let (_, mut other, _) =
            state.submit_keys(&account(), &service("S1"), false, keys(&["b"]), now);
        let (purge_all, _receiver) = state.submit_purge_all(&account(), &service("S2"), now);
        assert!(state.withdraw(job).is_some());
        assert!(state.withdraw(purge_all).is_some());
        assert_eq!(
            state.next_ready(&queue(true), now + LINGER),
            Next::Idle,
            "nothing waits for the purge_all"
        );
        let Next::Ready(id) = state.next_ready(&queue(false), now + LINGER) else {
            panic!()
        };
        let sealed = state.seal(id);
        assert_eq!(
            sealed.keys,
            ["b"],
            "only the key another job waits for is sent"
        );
        state.complete_keys(sealed.id, Ok(ids_for(&sealed)), 1);
        assert!(other.try_recv().is_ok());
        assert_eq!(state.waiting_jobs(), 0);
        assert_eq!(state.batches(), 0);
    }

    #[test]
    fn withdrawn_job_keeps_partial_result() {
        let now = Instant::now();
        let mut state = TestState::new(1, LINGER);
        let (job, _receiver, _) =
            state.submit_keys(&account(), &service("S1"), false, keys(&["a", "b"]), now);
        let Next::Ready(first) = state.next_ready(&queue(false), now) else {
            panic!()
        };
        let first = state.seal(first);
        state.complete_keys(first.id, Ok(ids_for(&first)), 2);
        let Next::Ready(second) = state.next_ready(&queue(false), now) else {
            panic!()
        };
        let second = state.seal(second);
        let Some(Resolution::Keys(partial)) = state.withdraw(job) else {
            panic!()
        };
        assert_eq!(partial.purge_ids.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(partial.attempts, 2);
        // The sealed batch still completes, without a job to tell.
        state.complete_keys(second.id, Ok(ids_for(&second)), 1);
        assert_eq!(state.batches(), 0);
    }

    #[test]
    fn withdrawn_in_flight_counts_attempt() {
        let now = Instant::now();
        let mut state = TestState::new(256, LINGER);
        let (keys_job, _receiver, _) =
            state.submit_keys(&account(), &service("S1"), false, keys(&["a"]), now);
        let (all_job, _receiver) = state.submit_purge_all(&account(), &service("S2"), now);
        let (waiting_job, _receiver, _) =
            state.submit_keys(&account(), &service("S3"), false, keys(&["b"]), now);
        // The key batch of S1 is the oldest of its queue, so it is sealed first. S3 stays unsealed.
        let Next::Ready(first) = state.next_ready(&queue(false), now + LINGER) else {
            panic!("the key batches are ready")
        };
        assert_eq!(state.seal(first).service.as_str(), "S1");
        let Next::Ready(all) = state.next_ready(&queue(true), now + LINGER) else {
            panic!("the purge_all is ready")
        };
        state.seal(all);

        let Some(Resolution::Keys(keys_result)) = state.withdraw(keys_job) else {
            panic!("the key job was waiting")
        };
        let Some(Resolution::PurgeAll { attempts, .. }) = state.withdraw(all_job) else {
            panic!("the purge_all job was waiting")
        };

        assert_eq!(keys_result.attempts, 1, "its request was sent");
        assert_eq!(attempts, 1, "its request was sent");
        let Some(Resolution::Keys(unsent)) = state.withdraw(waiting_job) else {
            panic!("the third job was waiting")
        };
        assert_eq!(unsent.attempts, 0, "nothing was sent for it");
    }

    #[test]
    fn full_window_sends_oldest_batch_at_once() {
        let now = Instant::now();
        let long = Duration::from_millis(900);
        let mut state = TestState::with_backlog_linger(256, LINGER, long, 10);
        state.set_behind(true);
        for key in 0..8 {
            state.submit_keys(
                &account(),
                &service("S1"),
                false,
                vec![format!("k{key}")],
                now,
            );
        }
        assert_eq!(state.next_ready(&queue(false), now), Next::At(now + long));
        state.submit_keys(&account(), &service("S2"), false, keys(&["x"]), now);
        // Nine jobs wait out of a window of ten: no job can come to fill the batches.
        assert!(matches!(
            state.next_ready(&queue(false), now),
            Next::Ready(_)
        ));
    }

    #[test]
    fn backlog_lingers_longer_until_it_drains() {
        let now = Instant::now();
        let long = Duration::from_millis(900);
        let mut state = TestState::with_backlog_linger(256, LINGER, long, 1000);
        state.submit_keys(&account(), &service("S1"), false, keys(&["a"]), now);
        state.set_behind(true);
        assert_eq!(
            state.next_ready(&queue(false), now + LINGER),
            Next::At(now + long)
        );
        state.set_behind(false);
        assert!(matches!(
            state.next_ready(&queue(false), now + LINGER),
            Next::Ready(_)
        ));
    }

    #[test]
    fn missing_purge_id_counts_as_failed() {
        let now = Instant::now();
        let mut state = TestState::new(256, LINGER);
        let (_, mut job, _) =
            state.submit_keys(&account(), &service("S1"), false, keys(&["a", "b"]), now);
        let Next::Ready(id) = state.next_ready(&queue(false), now + LINGER) else {
            panic!()
        };
        state.seal(id);
        let partial = BTreeMap::from([("a".to_owned(), "id-a".to_owned())]);
        state.complete_keys(id, Ok(partial), 1);
        let Resolution::Keys(result) = job.try_recv().unwrap() else {
            panic!()
        };
        assert_eq!(result.failed, ["b"]);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// One step of a random run: a job submitting keys, or the dispatcher draining.
        #[derive(Debug, Clone)]
        enum Step {
            Submit {
                service: u8,
                soft: bool,
                keys: Vec<u8>,
            },
            Drain,
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                4 => (0u8..3, any::<bool>(), prop::collection::vec(0u8..40, 1..12))
                    .prop_map(|(service, soft, keys)| Step::Submit { service, soft, keys }),
                1 => Just(Step::Drain),
            ]
        }

        proptest! {
            /// Whatever jobs arrive, a request never carries more than `max_keys` keys or a key
            /// twice, never mixes services or soft and hard, and every job gets a purge id for
            /// each of its keys.
            #[test]
            fn batches_respect_limits_and_answer_every_job(steps in prop::collection::vec(step(), 1..60), max_keys in 1usize..8) {
                let now = Instant::now();
                let mut state = TestState::new(max_keys, LINGER);
                let mut jobs = Vec::new();
                let queue = queue(false);
                let drain = |state: &mut TestState| -> Result<(), TestCaseError> {
                    while let Next::Ready(id) = state.next_ready(&queue, now + LINGER) {
                        let sealed = state.seal(id);
                        prop_assert!(sealed.keys.len() <= max_keys);
                        let mut distinct = sealed.keys.clone();
                        distinct.sort();
                        distinct.dedup();
                        prop_assert_eq!(distinct.len(), sealed.keys.len());
                        let ids = sealed
                            .keys
                            .iter()
                            .map(|key| (key.clone(), format!("{}:{key}:{}", sealed.service, matches!(sealed.kind, BatchKind::Keys { soft: true }))))
                            .collect();
                        state.complete_keys(sealed.id, Ok(ids), 1);
                    }
                    Ok(())
                };
                for step in steps {
                    match step {
                        Step::Submit { service: index, soft, keys: names } => {
                            let mut names: Vec<String> = names.iter().map(|k| format!("k{k}")).collect();
                            names.sort();
                            names.dedup();
                            let service_id = service(&format!("S{index}"));
                            let (_, receiver, _) = state.submit_keys(&account(), &service_id, soft, names.clone(), now);
                            jobs.push((service_id, soft, names, receiver));
                        }
                        Step::Drain => drain(&mut state)?,
                    }
                }
                drain(&mut state)?;
                for (service_id, soft, names, mut receiver) in jobs {
                    let Ok(Resolution::Keys(result)) = receiver.try_recv() else {
                        return Err(TestCaseError::fail("a job was not resolved"));
                    };
                    prop_assert!(result.failed.is_empty());
                    prop_assert_eq!(result.purge_ids.len(), names.len());
                    for name in &names {
                        // The id names the batch's service and softness: the key went out in a
                        // request of the job's own group.
                        prop_assert_eq!(&result.purge_ids[name], &format!("{service_id}:{name}:{soft}"));
                    }
                }
                prop_assert_eq!(state.waiting_jobs(), 0);
                prop_assert_eq!(state.batches(), 0);
            }
        }
    }

    #[test]
    fn purge_all_after_seal_opens_new_batch() {
        let mut state = TestState::new(10, LINGER);
        let now = Instant::now();
        let (_, _first) = state.submit_purge_all(&account(), &service("s1"), now);
        let Next::Ready(id) = state.next_ready(&queue(true), now + LINGER) else {
            panic!("the purge_all batch is ready after the linger");
        };
        state.seal(id);

        let (_, mut late) = state.submit_purge_all(&account(), &service("s1"), now + LINGER);
        state.complete_purge_all(id, Ok(()), 1);
        assert!(
            late.try_recv().is_err(),
            "a purge_all sent before the job arrived does not cover it"
        );
        assert!(matches!(
            state.next_ready(&queue(true), now + 2 * LINGER),
            Next::Ready(_)
        ));
    }

    #[test]
    fn counts_follow_jobs_and_batches() {
        let mut state = TestState::new(256, LINGER);
        let now = Instant::now();
        let (job, _keys, _) =
            state.submit_keys(&account(), &service("S1"), false, keys(&["a"]), now);
        let (_, _all) = state.submit_purge_all(&account(), &service("S2"), now);
        assert_eq!(state.waiting_jobs(), 2);
        assert_eq!(state.batches(), 2);

        assert!(state.withdraw(job).is_some());
        assert_eq!(state.waiting_jobs(), 1);
        assert_eq!(state.batches(), 1);
    }
}
