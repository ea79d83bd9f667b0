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
        }
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
    let mut clock = service.every.map(|every| {
        let start = match service.first {
            First::AtStart => Instant::now(),
            First::AfterOneInterval => Instant::now() + every,
        };
        let mut clock = tokio::time::interval_at(start, every);
        clock.set_missed_tick_behavior(MissedTickBehavior::Delay);
        clock
    });
    let mut waited = service.first == First::AtStart && clock.is_none();
    let reason = loop {
        if !waited {
            tokio::select! {
                () = tick(clock.as_mut()) => {}
                () = notified(service.wake.as_deref()) => {}
                () = shutdown.cancelled() => break "shutdown",
            }
        }
        waited = false;
        // Where a step would be skipped while this replica does not hold
        // the service's lease, once replicas share a store.
        let outcome = tokio::select! {
            outcome = step() => outcome,
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
