//! Logs (tracing) and metrics (Prometheus). Message contents are never
//! logged above debug level: triage chats carry sensitive evidence.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::OnceLock;
use xxhash_rust::xxh3::Xxh3;

/// Seconds; from sub-millisecond proxy work to multi-minute streams.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    120.0,
];

/// The process-wide recorder: metrics macros write to one global, so every
/// application in a process (several in tests) shares it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Only fails when another recorder was installed first; then
            // this handle renders nothing, which /metrics makes visible.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

/// Folds the histogram samples recorded since the last call into their
/// buckets. Until then the recorder keeps every sample, so without this a
/// process whose `/metrics` nobody scrapes grows by each request.
pub fn upkeep_step(
    handle: &PrometheusHandle,
) -> Result<crate::service::Next, std::convert::Infallible> {
    handle.run_upkeep();
    Ok(crate::service::Next::Wait)
}

/// Structured logs to stderr. `RUST_LOG` filters (default `info`);
/// `FLYWHEEL_LOG_FORMAT=json` switches to one JSON object per line.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("FLYWHEEL_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Label sets kept at most, per [`Handles`]: far above what routes,
/// statuses and model versions make; past it, handles are registered
/// anew on each call (correct, only slower).
const MAX_HANDLES: usize = 4096;

/// Metric handles kept by their label values, for the metrics recorded on
/// every request. The metrics macros build the key anew on each call —
/// the label strings, a hash, a lookup in the recorder's registry — which
/// the request path's profile showed at several thousand instructions per
/// request; a handle found here by its labels costs a hash of them.
pub struct Handles<T> {
    /// By the hash of their labels: the labels and the handles.
    kept: RwLock<HashMap<u64, Vec<Kept<T>>>>,
}

type Kept<T> = (Vec<Box<str>>, T);

impl<T> Default for Handles<T> {
    fn default() -> Self {
        Self {
            kept: RwLock::new(HashMap::new()),
        }
    }
}

impl<T: Clone> Handles<T> {
    /// The handles for `labels`, registered by `register` the first time.
    pub fn get<const N: usize>(&self, labels: [&str; N], register: impl FnOnce() -> T) -> T {
        let mut hasher = Xxh3::new();
        for label in labels {
            hasher.update(label.as_bytes());
            // Not UTF-8: no label ends where another begins.
            hasher.update(&[0xff]);
        }
        let hash = hasher.digest();
        let same = |(kept, _): &&Kept<T>| kept.iter().map(|l| &**l).eq(labels);
        if let Some((_, handles)) = self
            .kept
            .read()
            .get(&hash)
            .and_then(|v| v.iter().find(same))
        {
            return handles.clone();
        }
        let handles = register();
        let mut kept = self.kept.write();
        if kept.values().map(Vec::len).sum::<usize>() < MAX_HANDLES {
            let entry = kept.entry(hash).or_default();
            if !entry.iter().any(|e| same(&e)) {
                entry.push((labels.map(Box::from).to_vec(), handles.clone()));
            }
        }
        handles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upkeep_folds_histogram_samples_into_buckets() {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            for _ in 0..3 {
                metrics::histogram!("upkeep_test_seconds").record(0.002);
            }
        });
        assert_eq!(upkeep_step(&handle).unwrap(), crate::service::Next::Wait);
        let text = handle.render();
        assert!(text.contains("upkeep_test_seconds_count 3"), "{text}");
        assert!(
            text.contains(r#"upkeep_test_seconds_bucket{le="0.0025"} 3"#),
            "{text}"
        );
    }

    #[test]
    fn handles_are_registered_once_per_label_set() {
        let handles: Handles<usize> = Handles::default();
        let mut registered = 0;
        let mut get = |labels: [&str; 2]| {
            handles.get(labels, || {
                registered += 1;
                registered
            })
        };
        assert_eq!(get(["a", "b"]), 1);
        assert_eq!(get(["a", "b"]), 1);
        // Labels that concatenate alike are other labels.
        assert_eq!(get(["ab", ""]), 2);
        assert_eq!(get(["a", "b"]), 1);
        assert_eq!(get(["", "ab"]), 3);
    }
}
