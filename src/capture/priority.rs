//! The capture writer's CPU priority. With `capture.writer_priority =
//! "background"` the writer thread runs under `SCHED_IDLE` (Linux): only
//! when no request needs the CPU, preempted as soon as one does (and
//! yielding often, for kernels that preempt it late), so capture does
//! not show in the proxy's latency. It must not starve either:
//! it returns to normal priority while a backlog builds (queue an eighth
//! full), seen by the writer or by a watchdog on the request runtime,
//! which also brings back a writer that has not run for two flush
//! intervals; it goes back to the background once it has caught up and
//! the queue is nearly empty. The writer is woken as soon as a batch
//! waits, so the queue does not fill past an eighth between two of its
//! ticks merely because requests come fast. The watchdog matters most: a
//! writer starved in the background does not run to see its own backlog.

use crate::config::WriterPriority;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use thread_priority::{
    NormalThreadSchedulePolicy, ThreadId, ThreadPriority, ThreadPriorityOsValue,
    ThreadSchedulePolicy,
};

/// How often the watchdog looks, at most: at the fastest this machine
/// serves (about 36,000 requests a second, capture off) a tenth of a
/// second fills under half of the default queue, so a backlog is caught
/// before the queue is full.
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// Shared between the writer thread and its watchdog.
pub struct Priority {
    adaptive: bool,
    background: AtomicBool,
    thread: OnceLock<ThreadId>,
    /// Milliseconds since `epoch` when the writer last ran its loop.
    heartbeat_ms: AtomicU64,
    epoch: Instant,
}

impl Priority {
    /// Background needs the right to come back to normal priority (root,
    /// `CAP_SYS_NICE` or a raised `RLIMIT_NICE`); without it the writer
    /// stays at normal priority rather than risk starving.
    pub fn new(configured: WriterPriority) -> Arc<Self> {
        let adaptive = configured == WriterPriority::Background && returns_from_background();
        if configured == WriterPriority::Background && !adaptive {
            tracing::warn!(
                "capture.writer_priority = \"background\" needs the right to return to normal priority (CAP_SYS_NICE or RLIMIT_NICE); the capture writer runs at normal priority"
            );
        }
        Arc::new(Self {
            adaptive,
            background: AtomicBool::new(false),
            thread: OnceLock::new(),
            heartbeat_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Called on the writer thread when it starts.
    pub fn enter(&self) {
        let _ = self.thread.set(thread_priority::thread_native_id());
        self.beat();
        if self.adaptive {
            self.set(true);
        }
    }

    /// Called by the writer each time round its loop, with the queue's
    /// length: goes normal once the queue is an eighth full, back to the
    /// background once it is nearly empty.
    pub fn follow(&self, queued: usize, capacity: usize) {
        self.beat();
        if !self.adaptive {
            return;
        }
        let background = self.background.load(Ordering::Relaxed);
        if background && backlog(queued, capacity) {
            self.set(false);
        } else if !background && queued <= capacity / 64 {
            self.set(true);
        }
    }

    /// Runs on the request runtime until `stop`: brings the writer back to
    /// normal priority once its queue holds a backlog (`queue` says how
    /// many exchanges wait, and how many it holds) or it has not run for
    /// two flush intervals.
    pub async fn watch(
        self: Arc<Self>,
        flush_every: Duration,
        queue: impl Fn() -> (usize, usize),
        stop: impl Future<Output = ()>,
    ) {
        if !self.adaptive {
            return stop.await;
        }
        let flush_every = flush_every.max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(flush_every.min(WATCH_EVERY));
        let watch = async {
            loop {
                tick.tick().await;
                if !self.background.load(Ordering::Relaxed) {
                    continue;
                }
                let idle_for = self
                    .now_ms()
                    .saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed));
                let (queued, capacity) = queue();
                if backlog(queued, capacity) || idle_for > 2 * flush_every.as_millis() as u64 {
                    self.set(false);
                }
            }
        };
        tokio::select! {
            () = watch => {}
            () = stop => {}
        }
    }

    /// Whether the writer runs in the background now.
    pub fn in_background(&self) -> bool {
        self.background.load(Ordering::Relaxed)
    }

    fn beat(&self) {
        self.heartbeat_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn set(&self, background: bool) {
        let Some(thread) = self.thread.get() else {
            return;
        };
        if set_policy(*thread, background) {
            self.background.store(background, Ordering::Relaxed);
        }
    }
}

/// Whether `queued` exchanges are a backlog the writer must catch up on
/// at normal priority.
fn backlog(queued: usize, capacity: usize) -> bool {
    queued > capacity / 8
}

/// `SCHED_IDLE` or `SCHED_OTHER`, nice 0 either way.
fn set_policy(thread: ThreadId, background: bool) -> bool {
    #[cfg(target_os = "linux")]
    let idle = NormalThreadSchedulePolicy::Idle;
    #[cfg(not(target_os = "linux"))]
    let idle = NormalThreadSchedulePolicy::Other;
    let policy = if background {
        idle
    } else {
        NormalThreadSchedulePolicy::Other
    };
    let nice_zero = ThreadPriority::Os(ThreadPriorityOsValue::default());
    thread_priority::set_thread_priority_and_policy(
        thread,
        nice_zero,
        ThreadSchedulePolicy::Normal(policy),
    )
    .map_err(|e| tracing::debug!(error = ?e, background, "could not change the capture writer's priority"))
    .is_ok()
}

/// Tries the round trip on a throwaway thread, so the writer never ends up
/// stuck in the background.
fn returns_from_background() -> bool {
    std::thread::spawn(|| {
        let me = thread_priority::thread_native_id();
        set_policy(me, true) && set_policy(me, false)
    })
    .join()
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn more_than_an_eighth_of_the_queue_is_a_backlog() {
        assert!(!backlog(1024, 8192));
        assert!(backlog(1025, 8192));
        assert!(!backlog(0, 0));
    }

    /// A writer starved in the background never runs its loop to see its
    /// own backlog: the watchdog sees it for it.
    #[tokio::test]
    async fn the_watchdog_brings_back_a_writer_whose_queue_fills() {
        let priority = Priority::new(WriterPriority::Background);
        // A writer that enters the background, then does not run.
        let (entered, has_entered) = std::sync::mpsc::channel::<()>();
        let (release, parked) = std::sync::mpsc::channel::<()>();
        let writer = priority.clone();
        let thread = std::thread::spawn(move || {
            writer.enter();
            let _ = entered.send(());
            let _ = parked.recv();
        });
        has_entered.recv().unwrap();
        // Without the right to return, it never left normal priority.
        assert_eq!(
            priority.background.load(Ordering::Relaxed),
            priority.adaptive
        );
        let queued = Arc::new(AtomicUsize::new(2));
        let watch = |queued: Arc<AtomicUsize>| {
            // Idle for longer than this test: only the queue can bring it back.
            priority.clone().watch(
                Duration::from_secs(600),
                move || (queued.load(Ordering::Relaxed), 16),
                tokio::time::sleep(3 * WATCH_EVERY),
            )
        };
        watch(queued.clone()).await;
        assert_eq!(
            priority.background.load(Ordering::Relaxed),
            priority.adaptive,
            "two of sixteen is no backlog"
        );
        queued.store(3, Ordering::Relaxed);
        watch(queued).await;
        assert!(!priority.background.load(Ordering::Relaxed));
        drop(release);
        thread.join().unwrap();
    }
}
