//! Alerts after a run: a version whose metric is under its configured
//! target, or fell by more than `evaluation.alert_drop` since the
//! version's previous run of the alias, gets an `evaluation` alert —
//! stored (listed by `/admin/api/alerts`) and handed to the webhook.

use super::Context;
use super::run::summary_targets;
use crate::config::EvaluationConfig;
use crate::ids::{new_id, now_rfc3339};
use crate::store::{AlertRecord, EvaluationRecord, PerformanceRecord, StoreError};

/// Stores and sends the alerts `run` calls for; returns them.
pub fn after_run(app: &Context, run: &EvaluationRecord) -> Result<Vec<AlertRecord>, StoreError> {
    let history = app.store.performance(&run.alias)?;
    let alerts = alerts_for(run, &history, &app.config);
    for alert in &alerts {
        app.alert_hook.raise(&*app.store, alert)?;
        tracing::warn!(alias = %run.alias, version = ?alert.version, metric = ?alert.metric, "evaluation alert");
        metrics::counter!("flywheel_evaluation_alerts_total", "alias" => run.alias.clone())
            .increment(1);
    }
    Ok(alerts)
}

/// The alerts, as plain data: `history` is the alias's performance
/// records, this run's included.
pub fn alerts_for(
    run: &EvaluationRecord,
    history: &[PerformanceRecord],
    config: &EvaluationConfig,
) -> Vec<AlertRecord> {
    let mut out = Vec::new();
    for version in &run.versions {
        for (metric, target) in summary_targets(&config.targets) {
            let now = history
                .iter()
                .find(|p| p.evaluation_id == run.id && p.version == *version && p.metric == metric);
            let Some(value) = now.and_then(|p| p.score) else {
                continue;
            };
            if value < target {
                let message = format!(
                    "{metric} of `{}`/`{version}` is {value:.3}, under its target of {target:.3} (evaluation {})",
                    run.alias, run.id
                );
                out.push(alert(run, version, metric, value, target, message));
                continue;
            }
            let before = history
                .iter()
                .rev()
                .find(|p| p.evaluation_id < run.id && p.version == *version && p.metric == metric);
            if let Some(previous) = before.and_then(|p| p.score)
                && previous - value > config.alert_drop
            {
                let message = format!(
                    "{metric} of `{}`/`{version}` dropped from {previous:.3} to {value:.3} since its previous evaluation (more than {:.3}; evaluation {})",
                    run.alias, config.alert_drop, run.id
                );
                out.push(alert(run, version, metric, value, previous, message));
            }
        }
    }
    out
}

fn alert(
    run: &EvaluationRecord,
    version: &str,
    metric: &str,
    value: f64,
    threshold: f64,
    message: String,
) -> AlertRecord {
    AlertRecord {
        id: new_id("alert"),
        at: now_rfc3339(),
        kind: "evaluation".into(),
        alias: Some(run.alias.clone()),
        version: Some(version.to_string()),
        metric: Some(metric.to_string()),
        value: Some(value),
        threshold: Some(threshold),
        message,
        state: "open".into(),
        acknowledged_by: None,
        acknowledged_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str) -> EvaluationRecord {
        EvaluationRecord {
            id: id.into(),
            alias: "triage".into(),
            versions: vec!["base".into()],
            dataset_id: "ds_1".into(),
            split: "validation".into(),
            status: "succeeded".into(),
            done: 1,
            total: 1,
            skipped: 0,
            created_by: "t".into(),
            created_at: "t".into(),
            started_at: None,
            finished_at: None,
            error: None,
            results: None,
            comparison: None,
        }
    }

    fn figure(evaluation: &str, metric: &str, score: f64) -> PerformanceRecord {
        PerformanceRecord {
            at: "t".into(),
            alias: "triage".into(),
            version: "base".into(),
            dataset_id: "ds_1".into(),
            evaluation_id: evaluation.into(),
            metric: metric.into(),
            score: Some(score),
            n: 10,
        }
    }

    #[test]
    fn under_target_and_dropped_raise_alerts_and_steady_does_not() {
        let mut config = EvaluationConfig::default();
        config.targets.accuracy = 0.5;
        config.targets.precision_high_severity = 0.0;
        config.targets.recall_critical = 0.0;
        let history = [
            figure("eval_1", "accuracy", 0.9),
            figure("eval_1", "recall_critical", 0.5),
            figure("eval_2", "accuracy", 0.8),
            figure("eval_2", "recall_critical", 0.48),
        ];
        let alerts = alerts_for(&run("eval_2"), &history, &config);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].metric.as_deref(), Some("accuracy"));
        assert_eq!(alerts[0].threshold, Some(0.9));
        config.targets.accuracy = 0.85;
        let alerts = alerts_for(&run("eval_2"), &history, &config);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].threshold, Some(0.85), "under target wins");
        assert!(alerts_for(&run("eval_1"), &history[..2], &config).is_empty());
    }
}
