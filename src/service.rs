//! The one runner of every background service: [`periodic`] calls a
//! service's step on its clock (and when woken), until shutdown or until
//! the step says the service is done. It logs which service stopped and
//! why, and counts each failed step in
//! `flywheel_service_step_failures_total{service}`; a failed step is
//! logged and the service goes on at its next tick.
//!
//! A step is a plain async function over the service's own context, so
//! its unit tests call it directly under a paused clock. Blocking steps
//! (the store) go through [`blocking`], which turns a panic into a
//! failure of the step.
//!
//! Replicas sharing a store run a [`Lease`]d service once among them: a
//! replica steps only while it holds the service's lease in the store,
//! renews it while a step runs, and gives the step up if the renewal is
//! refused. A replica that dies stops renewing, and another takes the
//! lease over once it expires (`store.lease_ttl_s`).

use crate::store::SharedStore;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// What a service is: its name (in logs and metrics) and when it steps.
pub struct Service {
    pub name: &'static str,
    /// The clock: a step every so often. `None`: only when woken (or
    /// again at once, when a step asks).
    pub every: Option<Duration>,
    /// Whether the first step is at start or one interval after it.
    pub first: First,
    /// Wakes the service for a step before its next tick.
    pub wake: Option<Arc<Notify>>,
    /// Held in the shared store while this replica steps.
    pub lease: Option<Lease>,
}

/// A leased service that is only woken still looks for work this often:
/// what another replica queued wakes that replica, not the holder.
const PICK_UP_EVERY: Duration = Duration::from_secs(5);

/// This replica's claim on services that must run once among replicas.
#[derive(Clone)]
pub struct Lease {
    store: SharedStore,
    holder: Arc<str>,
    /// How long the lease outlives a renewal; renewed every third of it.
    ttl: Duration,
}

impl Lease {
    /// Leases in `store`, held as `holder` (unique per running process)
    /// for `ttl` after each renewal.
    pub fn new(store: SharedStore, holder: impl Into<Arc<str>>, ttl: Duration) -> Self {
        Self {
            store,
            holder: holder.into(),
            ttl,
        }
    }

    /// Takes or renews the service's lease: whether this replica holds it.
    /// A store that cannot answer holds nothing for this replica.
    async fn hold(&self, service: &'static str) -> bool {
        let (store, holder, ttl) = (self.store.clone(), self.holder.clone(), self.ttl);
        match blocking(move || store.try_lease(service, &holder, ttl)).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(service, error = %e, "cannot take the service's lease; skipping a step");
                false
            }
        }
    }

    /// Gives the lease up, so another replica takes the service over at
    /// once; a failure only means it waits for the expiry.
    async fn release(&self, service: &'static str) {
        let (store, holder) = (self.store.clone(), self.holder.clone());
        if let Err(e) = blocking(move || store.release_lease(service, &holder)).await {
            tracing::warn!(service, error = %e, "cannot give the service's lease up; it expires by itself");
        }
    }

    /// Renews the lease every third of its time; completes once a
    /// renewal is refused.
    async fn keep(&self, service: &'static str) {
        loop {
            tokio::time::sleep(self.ttl / 3).await;
            if !self.hold(service).await {
                return;
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First {
    AtStart,
    AfterOneInterval,
}

impl Service {
    /// A step every `every`, the first at start.
    pub fn every(name: &'static str, every: Duration) -> Self {
        Self {
            name,
            every: Some(every),
            first: First::AtStart,
            wake: None,
            lease: None,
        }
    }

    /// Runs once among the replicas sharing `lease`'s store, when given.
    pub fn leased(mut self, lease: Option<Lease>) -> Self {
        self.lease = lease;
        self
    }

    /// The first step one interval after start.
    pub fn first_after_one_interval(mut self) -> Self {
        self.first = First::AfterOneInterval;
        self
    }

    /// A step also whenever `wake` is notified.
    pub fn woken_by(mut self, wake: Arc<Notify>) -> Self {
        self.wake = Some(wake);
        self
    }

    /// Only woken (or asked again by its step), the first step at start.
    pub fn on_wake(name: &'static str, wake: Option<Arc<Notify>>) -> Self {
        Self {
            name,
            every: None,
            first: First::AtStart,
            wake,
            lease: None,
        }
    }
}

/// What the runner does after a step that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait for the next tick or wake-up.
    Wait,
    /// Step again at once: there is more to do.
    Again,
    /// The service is done; the reason is logged.
    Stop(&'static str),
}

/// Runs `step` as `service` says until `shutdown` (which also cuts a step
/// short: every step leaves the store consistent at each await) or until
/// a step returns [`Next::Stop`].
pub async fn periodic<F, Fut, E>(service: Service, shutdown: CancellationToken, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Next, E>>,
    E: fmt::Display,
{
    let name = service.name;
    let every = service
        .every
        .or(service.lease.as_ref().map(|_| PICK_UP_EVERY));
    let mut clock = every.map(|every| {
        let start = match service.first {
            First::AtStart => Instant::now(),
            First::AfterOneInterval => Instant::now() + every,
        };
        let mut clock = tokio::time::interval_at(start, every);
        clock.set_missed_tick_behavior(MissedTickBehavior::Delay);
        clock
    });
    let mut waited = service.first == First::AtStart && service.every.is_none();
    let reason = loop {
        if !waited {
            tokio::select! {
                () = tick(clock.as_mut()) => {}
                () = notified(service.wake.as_deref()) => {}
                () = shutdown.cancelled() => break "shutdown",
            }
        }
        waited = false;
        if let Some(lease) = &service.lease
            && !lease.hold(name).await
        {
            continue;
        }
        let outcome = tokio::select! {
            outcome = step() => outcome,
            () = kept(service.lease.as_ref(), name) => {
                tracing::warn!(service = name, "lost the service's lease during a step; another replica takes it over");
                continue;
            }
            () = shutdown.cancelled() => break "shutdown",
        };
        match outcome {
            Ok(Next::Wait) => {}
            Ok(Next::Again) => waited = true,
            Ok(Next::Stop(why)) => break why,
            Err(e) => {
                metrics::counter!("flywheel_service_step_failures_total", "service" => name)
                    .increment(1);
                tracing::error!(service = name, error = %e, "service step failed");
            }
        }
    };
    if let Some(lease) = &service.lease {
        lease.release(name).await;
    }
    tracing::info!(service = name, reason, "service stopped");
}

/// The next tick of the clock; never, without one.
async fn tick(clock: Option<&mut tokio::time::Interval>) {
    match clock {
        Some(clock) => {
            clock.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Completes when a held lease is lost; never, without a lease.
async fn kept(lease: Option<&Lease>, service: &'static str) {
    match lease {
        Some(lease) => lease.keep(service).await,
        None => std::future::pending().await,
    }
}

async fn notified(wake: Option<&Notify>) {
    match wake {
        Some(wake) => wake.notified().await,
        None => std::future::pending().await,
    }
}

/// A step that failed, or whose blocking part panicked.
#[derive(Debug)]
pub enum StepError<E> {
    Failed(E),
    Panicked(String),
}

impl<E: fmt::Display> fmt::Display for StepError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed(e) => e.fmt(f),
            Self::Panicked(e) => write!(f, "the step panicked: {e}"),
        }
    }
}

/// Runs a blocking step (store calls) off the async workers.
pub async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, StepError<E>>
where
    T: Send + 'static,
    E: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(StepError::Failed),
        Err(e) => Err(StepError::Panicked(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Steps counted, failing every other one, under a paused clock.
    #[tokio::test(start_paused = true)]
    async fn steps_on_its_clock_goes_on_after_failures_and_stops_at_shutdown() {
        let steps = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let counted = steps.clone();
        let runner = tokio::spawn(periodic(
            Service::every("test", Duration::from_secs(10)).first_after_one_interval(),
            shutdown.clone(),
            move || {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n.is_multiple_of(2) {
                        Err("failed on purpose")
                    } else {
                        Ok(Next::Wait)
                    }
                }
            },
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            steps.load(Ordering::SeqCst),
            0,
            "first step after one interval"
        );
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(steps.load(Ordering::SeqCst), 3, "at 10, 20 and 30 s");
        shutdown.cancel();
        runner.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_woken_service_steps_again_at_once_when_asked_and_stops_when_done() {
        let wake = Arc::new(Notify::new());
        let steps = Arc::new(AtomicUsize::new(0));
        let counted = steps.clone();
        let runner = tokio::spawn(periodic(
            Service::on_wake("test", Some(wake.clone())),
            CancellationToken::new(),
            move || {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    Ok::<_, String>(match n {
                        0 => Next::Again,
                        1 => Next::Wait,
                        _ => Next::Stop("done"),
                    })
                }
            },
        ));
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(steps.load(Ordering::SeqCst), 2, "at start, then again");
        wake.notify_one();
        runner.await.unwrap();
        assert_eq!(steps.load(Ordering::SeqCst), 3);
    }
}
