//! The capture writer's CPU priority. With `capture.writer_priority =
//! "background"` the writer thread runs under `SCHED_IDLE` (Linux): only
//! when no request needs the CPU, preempted the moment one does, so
//! capture never shows in the proxy's latency. It must not starve either:
//! it returns to normal priority while a backlog builds (queue an eighth
//! full) or when a watchdog on the request runtime sees it has not run for
//! two flush intervals, and goes back to the background once the queue is
//! nearly empty.

use crate::config::WriterPriority;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use thread_priority::{
    NormalThreadSchedulePolicy, ThreadId, ThreadPriority, ThreadPriorityOsValue,
    ThreadSchedulePolicy,
};

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
        if background && queued > capacity / 8 {
            self.set(false);
        } else if !background && queued <= capacity / 64 {
            self.set(true);
        }
    }

    /// Runs on the request runtime until `stop`: brings a writer that has
    /// not run for two flush intervals back to normal priority.
    pub async fn watch(self: Arc<Self>, flush_every: Duration, stop: impl Future<Output = ()>) {
        if !self.adaptive {
            return stop.await;
        }
        let period = flush_every.max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(period);
        let watch = async {
            loop {
                tick.tick().await;
                let idle_for = self
                    .now_ms()
                    .saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed));
                if self.background.load(Ordering::Relaxed)
                    && idle_for > 2 * period.as_millis() as u64
                {
                    self.set(false);
                }
            }
        };
        tokio::select! {
            () = watch => {}
            () = stop => {}
        }
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
