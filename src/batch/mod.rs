//! Batching: surrogate-key purges of concurrent jobs coalesced into shared bulk requests per
//! (account, service, soft), and purge_all jobs of one service coalesced into one request.
//!
//! Jobs submit their keys and wait. One dispatcher per account and budget class seals the
//! oldest ready batch once the budget admits a request, so batches keep filling while the
//! budget or the in-flight cap delays them. The [`Dispatch`] implementation sends the requests,
//! so this module does not depend on HTTP.

mod state;

pub use state::{BatchKind, KeysResult, Next, QueueKey, Resolution, Sealed, State};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::job::ServiceId;

/// The reply to a sent batch.
#[derive(Debug)]
pub enum Sent<E> {
    Keys {
        result: Result<BTreeMap<String, String>, E>,
        attempts: u32,
    },
    PurgeAll {
        result: Result<(), E>,
        attempts: u32,
    },
}

/// Sends sealed batches: the budget admission before sealing, then the request.
pub trait Dispatch: Send + Sync + 'static {
    type Error: Clone + Send + 'static;
    /// Proof of admission, held while the request is in flight.
    type Permit: Send + 'static;

    /// Waits until the budget of the queue's account and class admits one request.
    fn admit(&self, queue: &QueueKey) -> BoxFuture<'static, Self::Permit>;

    /// Sends one sealed batch, with retries as the implementation decides.
    fn send(&self, batch: Sealed, permit: Self::Permit) -> BoxFuture<'static, Sent<Self::Error>>;

    /// Builds the error of a batch whose sending panicked.
    fn internal_error(message: String) -> Self::Error;
}

/// How waiting for the batcher ended.
#[derive(Debug)]
pub enum Waited<T> {
    Done(T),
    /// The deadline passed first; what was done by then.
    TimedOut(T),
}

/// The end of waiting for a purge_all.
#[derive(Debug)]
pub enum PurgeAllWaited<E> {
    Done {
        result: Result<(), E>,
        attempts: u32,
    },
    /// The deadline passed first. `attempts` is at least 1 when the request was in flight.
    TimedOut { attempts: u32 },
}

struct Shared<D: Dispatch> {
    state: Mutex<State<D::Error>>,
    dispatch: D,
    /// Wakes the dispatcher of a queue when its batches change.
    wakers: Mutex<HashMap<QueueKey, Arc<Notify>>>,
}

/// The batcher: submit keys or purge_all jobs, get their resolution.
pub struct Batcher<D: Dispatch> {
    shared: Arc<Shared<D>>,
    /// Last value given to [`Batcher::set_behind`].
    behind: AtomicBool,
    dispatchers: Mutex<HashMap<QueueKey, JoinHandle<()>>>,
}

impl<D: Dispatch> Batcher<D> {
    pub fn new(dispatch: D, max_keys: usize, linger: Duration) -> Batcher<D> {
        Batcher::with_backlog_linger(dispatch, max_keys, linger, linger, usize::MAX)
    }

    /// Creates a batcher that lingers `backlog_linger` while the worker is behind, unless
    /// about `max_waiting` jobs (the window: consumers x prefetch) already wait.
    pub fn with_backlog_linger(
        dispatch: D,
        max_keys: usize,
        linger: Duration,
        backlog_linger: Duration,
        max_waiting: usize,
    ) -> Batcher<D> {
        Batcher {
            shared: Arc::new(Shared {
                state: Mutex::new(State::with_backlog_linger(
                    max_keys,
                    linger,
                    backlog_linger,
                    max_waiting,
                )),
                dispatch,
                wakers: Mutex::new(HashMap::new()),
            }),
            dispatchers: Mutex::new(HashMap::new()),
            behind: AtomicBool::new(false),
        }
    }

    /// Purges `keys` (distinct) of a service through shared bulk requests. When the deadline
    /// passes first, returns what was done by then; keys already in a sealed batch are still
    /// purged, the others are taken back.
    pub async fn purge_keys(
        &self,
        account: &Arc<str>,
        service: &ServiceId,
        soft: bool,
        keys: Vec<String>,
        deadline: Instant,
    ) -> Waited<KeysResult<D::Error>> {
        let (job, receiver, _) =
            self.state()
                .submit_keys(account, service, soft, keys, Instant::now());
        self.wake(State::<D::Error>::queue_of(
            account,
            BatchKind::Keys { soft },
        ));
        match tokio::time::timeout_at(deadline, receiver).await {
            Ok(Ok(Resolution::Keys(result))) => Waited::Done(result),
            _ => match self.state().withdraw(job) {
                Some(Resolution::Keys(partial)) => Waited::TimedOut(partial),
                _ => Waited::TimedOut(KeysResult::default()),
            },
        }
    }

    /// Purges everything of a service, sharing the request with other purge_all jobs of the
    /// service that wait at the same time. When the deadline passes first, the purge_all is not
    /// sent for this job unless its request was already in flight.
    pub async fn purge_all(
        &self,
        account: &Arc<str>,
        service: &ServiceId,
        deadline: Instant,
    ) -> PurgeAllWaited<D::Error> {
        let (job, receiver) = self
            .state()
            .submit_purge_all(account, service, Instant::now());
        self.wake(State::<D::Error>::queue_of(account, BatchKind::PurgeAll));
        match tokio::time::timeout_at(deadline, receiver).await {
            Ok(Ok(Resolution::PurgeAll { result, attempts })) => {
                PurgeAllWaited::Done { result, attempts }
            }
            _ => match self.state().withdraw(job) {
                Some(Resolution::PurgeAll { attempts, .. }) => {
                    PurgeAllWaited::TimedOut { attempts }
                }
                _ => PurgeAllWaited::TimedOut { attempts: 0 },
            },
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<D::Error>> {
        lock(&self.shared.state)
    }

    /// Tells the batcher whether the worker is behind (a full batch of jobs waits in the queue,
    /// unconsumed), which makes batches wait up to the backlog linger for keys. Dispatchers look
    /// again at once.
    pub fn set_behind(&self, behind: bool) {
        // Called for every delivery, so the lock is taken only on a change.
        if self.behind.swap(behind, Ordering::Relaxed) == behind {
            return;
        }
        self.state().set_behind(behind);
        self.wake_all();
    }

    /// Sends every open batch at once and keeps doing so, for a shutdown.
    pub fn set_flushing(&self, flushing: bool) {
        self.state().set_flushing(flushing);
        self.wake_all();
    }

    fn wake_all(&self) {
        for notify in lock(&self.shared.wakers).values() {
            notify.notify_one();
        }
    }

    /// Returns the number of jobs waiting for a batch.
    pub fn waiting_jobs(&self) -> usize {
        self.state().waiting_jobs()
    }

    /// Wakes the queue's dispatcher, starting it on first use, and again if it ever ended.
    fn wake(&self, queue: QueueKey) {
        let notify = {
            let mut wakers = lock(&self.shared.wakers);
            Arc::clone(wakers.entry(queue.clone()).or_default())
        };
        let mut dispatchers = lock(&self.dispatchers);
        let running = dispatchers
            .get(&queue)
            .is_some_and(|task| !task.is_finished());
        if !running {
            let task = tokio::spawn(run_dispatcher(
                Arc::clone(&self.shared),
                queue.clone(),
                Arc::clone(&notify),
            ));
            dispatchers.insert(queue, task);
        }
        notify.notify_one();
    }
}

/// Locks a mutex, taking it over if a panic poisoned it. The batching state changes in small
/// steps under the lock, and a job that panicked elsewhere must not stop every other job.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<D: Dispatch> Drop for Batcher<D> {
    fn drop(&mut self) {
        for task in lock(&self.dispatchers).values() {
            task.abort();
        }
    }
}

/// Seals and sends the ready batches of one queue, one admission at a time.
async fn run_dispatcher<D: Dispatch>(shared: Arc<Shared<D>>, queue: QueueKey, notify: Arc<Notify>) {
    loop {
        let next = lock(&shared.state).next_ready(&queue, Instant::now());
        match next {
            Next::Idle => notify.notified().await,
            Next::At(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = notify.notified() => {}
                }
            }
            Next::Ready(_) => {
                // Keys keep joining the batch while the budget delays it.
                let permit = shared.dispatch.admit(&queue).await;
                let sealed = {
                    let mut state = lock(&shared.state);
                    // A purge_all may have taken the batch as a rider in the meantime, or its
                    // jobs may have given up and taken it back.
                    match state.next_ready(&queue, Instant::now()) {
                        Next::Ready(id) => Some(state.seal(id)),
                        _ => None,
                    }
                };
                let Some(sealed) = sealed else {
                    continue;
                };
                tokio::spawn(send_batch(Arc::clone(&shared), sealed, permit));
            }
        }
    }
}

/// Sends a sealed batch and resolves its jobs. A panic while sending still resolves them,
/// with an internal error, so no job waits for a batch that will never finish.
async fn send_batch<D: Dispatch>(shared: Arc<Shared<D>>, sealed: Sealed, permit: D::Permit) {
    let id = sealed.id;
    let kind = sealed.kind;
    let sending = std::panic::AssertUnwindSafe(shared.dispatch.send(sealed, permit));
    let sent = match sending.catch_unwind().await {
        Ok(sent) => sent,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "sending a batch panicked".to_owned());
            tracing::error!(panic = %message, "sending a batch panicked");
            let error = D::internal_error(message);
            match kind {
                BatchKind::PurgeAll => Sent::PurgeAll {
                    result: Err(error),
                    attempts: 0,
                },
                BatchKind::Keys { .. } => Sent::Keys {
                    result: Err(error),
                    attempts: 0,
                },
            }
        }
    };
    let queues: Vec<QueueKey> = {
        let mut state = lock(&shared.state);
        match sent {
            Sent::Keys { result, attempts } => state.complete_keys(id, result, attempts),
            Sent::PurgeAll { result, attempts } => state.complete_purge_all(id, result, attempts),
        }
        // A failed purge_all puts its riders back; their dispatcher must look.
        state.busy_queues().cloned().collect()
    };
    let wakers = lock(&shared.wakers);
    for queue in queues {
        if let Some(notify) = wakers.get(&queue) {
            notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A dispatcher that records the batches it sends and returns an id for every key.
    #[derive(Default)]
    struct Recorder {
        sent: Mutex<Vec<Sealed>>,
        admitted: AtomicUsize,
    }

    struct Shared2(Arc<Recorder>);

    impl Dispatch for Shared2 {
        type Error = String;
        type Permit = ();

        fn admit(&self, _queue: &QueueKey) -> BoxFuture<'static, ()> {
            self.0.admitted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {})
        }

        fn internal_error(message: String) -> String {
            message
        }

        fn send(&self, batch: Sealed, _permit: ()) -> BoxFuture<'static, Sent<String>> {
            self.0.sent.lock().unwrap().push(batch.clone());
            Box::pin(async move {
                match batch.kind {
                    BatchKind::PurgeAll => Sent::PurgeAll {
                        result: Ok(()),
                        attempts: 1,
                    },
                    BatchKind::Keys { .. } => Sent::Keys {
                        result: Ok(batch
                            .keys
                            .iter()
                            .map(|k| (k.clone(), format!("id-{k}")))
                            .collect()),
                        attempts: 1,
                    },
                }
            })
        }
    }

    #[tokio::test]
    async fn concurrent_jobs_share_requests() {
        let recorder = Arc::new(Recorder::default());
        let batcher = Arc::new(Batcher::new(
            Shared2(Arc::clone(&recorder)),
            256,
            Duration::from_millis(20),
        ));
        let account: Arc<str> = Arc::from("default");
        let service = ServiceId::parse("S1").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);

        let mut tasks = Vec::new();
        for job in 0..300 {
            let batcher = Arc::clone(&batcher);
            let account = Arc::clone(&account);
            let service = service.clone();
            tasks.push(tokio::spawn(async move {
                batcher
                    .purge_keys(
                        &account,
                        &service,
                        false,
                        vec![format!("k{job}"), "shared".to_owned()],
                        deadline,
                    )
                    .await
            }));
        }
        for task in tasks {
            let Waited::Done(result) = task.await.unwrap() else {
                panic!("not resolved before the deadline");
            };
            assert_eq!(result.purge_ids.len(), 2);
            assert_eq!(result.purge_ids["shared"], "id-shared");
        }
        let sent = recorder.sent.lock().unwrap();
        let keys: usize = sent.iter().map(|batch| batch.keys.len()).sum();
        assert!(sent.iter().all(|batch| batch.keys.len() <= 256));
        assert!(
            sent.len() <= 3,
            "301 distinct keys fit in two full requests plus stragglers: {}",
            sent.len()
        );
        // "shared" goes again in each later batch, because later jobs named it after the
        // earlier request was sealed; every other key goes once.
        assert!(
            (301..=300 + sent.len()).contains(&keys),
            "{keys} keys in {} requests",
            sent.len()
        );
        assert_eq!(batcher.waiting_jobs(), 0);
    }

    #[tokio::test]
    async fn deadline_withdraws_job() {
        struct Never;
        impl Dispatch for Never {
            type Error = String;
            type Permit = ();
            fn admit(&self, _queue: &QueueKey) -> BoxFuture<'static, ()> {
                Box::pin(std::future::pending())
            }
            fn send(&self, _batch: Sealed, _permit: ()) -> BoxFuture<'static, Sent<String>> {
                unreachable!("nothing is admitted")
            }
            fn internal_error(message: String) -> String {
                message
            }
        }
        let batcher = Batcher::new(Never, 256, Duration::from_millis(1));
        let account: Arc<str> = Arc::from("default");
        let deadline = Instant::now() + Duration::from_millis(30);
        let service = ServiceId::parse("S1").unwrap();
        let waited = batcher
            .purge_keys(&account, &service, false, vec!["a".to_owned()], deadline)
            .await;
        assert!(matches!(waited, Waited::TimedOut(_)));
        let waited = batcher.purge_all(&account, &service, deadline).await;
        assert!(
            matches!(waited, PurgeAllWaited::TimedOut { attempts: 0 }),
            "{waited:?}"
        );
        assert_eq!(batcher.waiting_jobs(), 0);
    }

    #[tokio::test]
    async fn deadline_in_flight_counts_attempt() {
        struct Hung;
        impl Dispatch for Hung {
            type Error = String;
            type Permit = ();
            fn admit(&self, _queue: &QueueKey) -> BoxFuture<'static, ()> {
                Box::pin(async {})
            }
            fn send(&self, _batch: Sealed, _permit: ()) -> BoxFuture<'static, Sent<String>> {
                Box::pin(std::future::pending())
            }
            fn internal_error(message: String) -> String {
                message
            }
        }
        let batcher = Batcher::new(Hung, 256, Duration::from_millis(1));
        let account: Arc<str> = Arc::from("default");
        let service = ServiceId::parse("S1").unwrap();
        let deadline = Instant::now() + Duration::from_millis(50);

        let waited = batcher
            .purge_keys(&account, &service, false, vec!["a".to_owned()], deadline)
            .await;
        let Waited::TimedOut(partial) = waited else {
            panic!("the request never completes")
        };
        // The request was sent, so the job used an attempt, and Fastly may have purged the key.
        assert_eq!(partial.attempts, 1);
        let deadline = Instant::now() + Duration::from_millis(50);
        let waited = batcher.purge_all(&account, &service, deadline).await;
        assert!(
            matches!(waited, PurgeAllWaited::TimedOut { attempts: 1 }),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn panicking_send_resolves_jobs_and_dispatcher_goes_on() {
        struct Flaky(std::sync::atomic::AtomicBool);
        impl Dispatch for Arc<Flaky> {
            type Error = String;
            type Permit = ();
            fn admit(&self, _queue: &QueueKey) -> BoxFuture<'static, ()> {
                Box::pin(async {})
            }
            fn send(&self, batch: Sealed, _permit: ()) -> BoxFuture<'static, Sent<String>> {
                let first = !self.0.swap(true, Ordering::SeqCst);
                Box::pin(async move {
                    assert!(!first, "a defect while sending");
                    Sent::Keys {
                        result: Ok(batch
                            .keys
                            .iter()
                            .map(|k| (k.clone(), "id".to_owned()))
                            .collect()),
                        attempts: 1,
                    }
                })
            }
            fn internal_error(message: String) -> String {
                message
            }
        }
        let batcher = Batcher::new(
            Arc::new(Flaky(std::sync::atomic::AtomicBool::new(false))),
            256,
            Duration::from_millis(1),
        );
        let account: Arc<str> = Arc::from("default");
        let service = ServiceId::parse("S1").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let Waited::Done(first) = batcher
            .purge_keys(&account, &service, false, vec!["a".to_owned()], deadline)
            .await
        else {
            panic!("the job waited for a batch that never finished");
        };
        assert!(first.error.unwrap().contains("a defect while sending"));
        let Waited::Done(second) = batcher
            .purge_keys(&account, &service, false, vec!["b".to_owned()], deadline)
            .await
        else {
            panic!("the dispatcher stopped after the panic");
        };
        assert!(second.error.is_none());
    }
}
