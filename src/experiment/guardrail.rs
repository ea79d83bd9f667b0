//! Guardrails: every `check_interval_s`, each candidate with traffic is
//! compared with production on the metrics its alias watches; one that is
//! significantly worse loses its traffic to production at once, through
//! the registry (so the change is in the history and the audit log, by
//! `guardrail`), and an alert says why.

use super::report::{MetricComparison, comparisons};
use crate::config::{Config, GuardrailConfig};
use crate::evaluation::AlertHook;
use crate::evaluation::online::Verdict;
use crate::ids::{new_id, now_rfc3339};
use crate::registry::{Change, Registry, RegistryError, Request};
use crate::service::{Lease, Next, Service, StepError, blocking, periodic};
use crate::store::{AlertRecord, SharedStore, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the guardrail service needs, built once by the application.
pub struct Guardrails {
    pub store: SharedStore,
    /// Where a candidate's traffic is taken away.
    pub registry: Arc<Registry>,
    /// Each alias's `guardrails` section.
    pub config: Arc<Config>,
    /// Stores a stop's alert and queues it for the webhook, as the
    /// evaluations' alerts are.
    pub alerts: Arc<AlertHook>,
}

/// The guardrails of an alias: its config's, or the defaults for an alias
/// the config no longer names.
pub fn config_for<'a>(config: &'a Config, alias: &str) -> std::borrow::Cow<'a, GuardrailConfig> {
    config.models.iter().find(|m| m.name == alias).map_or_else(
        || std::borrow::Cow::Owned(GuardrailConfig::default()),
        |m| std::borrow::Cow::Borrowed(&m.guardrails),
    )
}

/// Checks every alias once; returns the alerts raised.
pub fn check_once(app: &Guardrails) -> Result<Vec<AlertRecord>, StoreError> {
    let mut raised = Vec::new();
    for record in app.registry.aliases() {
        let guard = config_for(&app.config, &record.alias);
        if !guard.enabled {
            continue;
        }
        let tallies = app.store.version_tallies(&record.alias)?;
        let mut stopped: Vec<String> = Vec::new();
        for c in comparisons(&record, &tallies, guard.alpha) {
            let live = record.version(&c.candidate).is_some_and(|v| v.weight > 0.0);
            if c.shadow || !live || stopped.contains(&c.candidate) || !watched(&guard, &c) {
                continue;
            }
            if c.result.verdict != Verdict::Worse {
                continue;
            }
            match stop(app, record.revision, &c) {
                Ok(alert) => {
                    stopped.push(c.candidate.clone());
                    raised.push(alert);
                }
                // An admin changed the alias meanwhile: look again next time.
                Err(RegistryError::RevisionMoved { .. }) => break,
                Err(RegistryError::Store(e)) => return Err(e),
                Err(e) => {
                    tracing::error!(error = %e, alias = %record.alias, "guardrail could not stop the candidate")
                }
            }
        }
    }
    Ok(raised)
}

fn watched(guard: &GuardrailConfig, c: &MetricComparison) -> bool {
    match c.metric {
        "error_rate" => guard.error_rate,
        "negative_feedback_rate" => guard.negative_feedback,
        _ => false,
    }
}

fn stop(
    app: &Guardrails,
    revision: u64,
    c: &MetricComparison,
) -> Result<AlertRecord, RegistryError> {
    let percent =
        |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{:.1}%", v * 100.0));
    let message = format!(
        "{} of `{}` is {} against production `{}`'s {} (always-valid p = {:.4}); its traffic went to production",
        c.metric,
        c.candidate,
        percent(c.candidate_value),
        c.production,
        percent(c.production_value),
        c.result.p_value
    );
    let alias = &c.alias;
    app.registry.change(Request {
        alias,
        expected_revision: Some(revision),
        actor: "guardrail",
        reason: &message,
        change: Change::Guardrail {
            version: c.candidate.clone(),
        },
    })?;
    let alert = AlertRecord {
        id: new_id("alert"),
        at: now_rfc3339(),
        kind: "guardrail".into(),
        alias: Some(alias.clone()),
        version: Some(c.candidate.clone()),
        metric: Some(c.metric.to_string()),
        value: c.candidate_value,
        threshold: c.production_value,
        message: message.clone(),
        state: "open".into(),
        acknowledged_by: None,
        acknowledged_at: None,
    };
    app.alerts.raise(&*app.store, &alert)?;
    tracing::warn!(alias = %alias, version = %c.candidate, metric = c.metric, "guardrail stopped a candidate");
    metrics::counter!("flywheel_guardrail_stops_total", "alias" => alias.clone(), "metric" => c.metric)
        .increment(1);
    Ok(alert)
}

/// The service's step: [`check_once`] off the async workers.
pub async fn step(app: &Arc<Guardrails>) -> Result<Next, StepError<StoreError>> {
    let state = app.clone();
    blocking(move || check_once(&state)).await?;
    Ok(Next::Wait)
}

/// Runs [`step`] at start and then every interval (the shortest any
/// alias asks for) until shutdown.
pub async fn run_guardrails(
    app: Arc<Guardrails>,
    lease: Option<Lease>,
    shutdown: CancellationToken,
) {
    let every = app
        .config
        .models
        .iter()
        .map(|m| m.guardrails.check_interval_s)
        .min()
        .unwrap_or(10);
    let service = Service::every("guardrails", Duration::from_secs(every.max(1))).leased(lease);
    periodic(service, shutdown, || {
        let app = app.clone();
        async move { step(&app).await }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_candidate_without_traffic_or_figures_is_left_alone() {
        let parts = crate::testing::parts("");
        let app = parts.guardrails();
        let before = parts.registry.alias("triage").unwrap();
        assert_eq!(step(&app).await.unwrap(), Next::Wait);
        assert!(check_once(&app).unwrap().is_empty());
        assert!(parts.store.alerts(None, 10, &|_| true).unwrap().is_empty());
        let after = parts.registry.alias("triage").unwrap();
        assert_eq!(after.revision, before.revision, "the registry is untouched");
    }
}
