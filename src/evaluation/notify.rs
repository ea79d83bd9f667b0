//! Alerts (evaluations', and guardrail stops) to `evaluation.webhook_url`.
//! Raising an alert stores it and queues its delivery in one step
//! (`Store::raise_alert`), so a delivery outlives the process — or the
//! replica — that raised it. One delivery service (leased, so among replicas one sends) POSTs the queued
//! alerts as Slack-compatible JSON, oldest first, and retries a failed one
//! after an exponential backoff, without holding up the others, up to
//! `evaluation.webhook_attempts` attempts. Delivery is at least once: a
//! POST whose answer was lost is sent again. Each failed attempt counts in
//! `flywheel_webhook_failures_total`; `flywheel_webhook_queued` is how many
//! wait.

use crate::config::EvaluationConfig;
use crate::ids::unix_ms;
use crate::service::{Lease, Next, Service, StepError, blocking, periodic};
use crate::store::{AlertRecord, QueuedWebhook, SharedStore, Store, StoreError};
use crate::upstream::Webhook;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Deliveries read (and tried) per step; the rest wait their turn.
const PAGE: usize = 256;
/// How often the queue is looked at without a wake-up: retries that came
/// due, and alerts another replica raised.
const POLL: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Raises alerts; kept in the evaluation context.
pub struct AlertHook {
    /// `None` without a webhook URL: alerts are only stored.
    delivery: Option<Arc<Delivery>>,
}

/// The delivery service's settings.
pub struct Delivery {
    webhook: Webhook,
    attempts: u32,
    backoff: Duration,
    /// Notified when this process queues an alert.
    wake: Arc<Notify>,
}

impl AlertHook {
    pub fn new(config: &EvaluationConfig) -> Result<Self, String> {
        let delivery = match &config.webhook_url {
            Some(url) => Some(Arc::new(Delivery {
                webhook: Webhook::new(url)?,
                attempts: config.webhook_attempts.max(1),
                backoff: Duration::from_millis(config.webhook_backoff_ms),
                wake: Arc::new(Notify::new()),
            })),
            None => None,
        };
        Ok(Self { delivery })
    }

    /// Stores `alert` with its delivery queued when there is a webhook,
    /// and wakes the delivery service.
    pub fn raise(&self, store: &dyn Store, alert: &AlertRecord) -> Result<(), StoreError> {
        let queued = self.delivery.as_ref().map(|_| QueuedWebhook {
            alert_id: alert.id.clone(),
            attempts: 0,
            next_attempt_ms: 0,
        });
        store.raise_alert(alert, queued.as_ref())?;
        if let Some(delivery) = &self.delivery {
            delivery.wake.notify_one();
        }
        Ok(())
    }

    /// The delivery service; `None` without a webhook.
    pub fn delivery(&self) -> Option<Arc<Delivery>> {
        self.delivery.clone()
    }
}

impl Delivery {
    /// Sends queued alerts until shutdown: at every wake-up, and every
    /// [`POLL`] for retries and for alerts raised elsewhere.
    pub async fn run(
        self: Arc<Self>,
        store: SharedStore,
        lease: Option<Lease>,
        shutdown: CancellationToken,
    ) {
        let service = Service::every("alert-webhook", POLL)
            .woken_by(self.wake.clone())
            .leased(lease);
        periodic(service, shutdown, || {
            let (delivery, store) = (self.clone(), store.clone());
            async move { delivery.step(&store).await }
        })
        .await;
    }

    /// The service's step: one attempt at each queued alert that is due,
    /// oldest first.
    pub async fn step(&self, store: &SharedStore) -> Result<Next, StepError<StoreError>> {
        let s = store.clone();
        let queued = blocking(move || s.queued_webhooks(PAGE)).await?;
        let now = unix_ms(SystemTime::now());
        let mut waiting = queued.len();
        for entry in queued.into_iter().filter(|e| e.next_attempt_ms <= now) {
            if self.attempt(store, entry).await? {
                waiting -= 1;
            }
        }
        metrics::gauge!("flywheel_webhook_queued").set(waiting as f64);
        Ok(Next::Wait)
    }

    /// One attempt; true when the alert left the queue (delivered, given
    /// up, or no longer stored).
    async fn attempt(
        &self,
        store: &SharedStore,
        mut entry: QueuedWebhook,
    ) -> Result<bool, StepError<StoreError>> {
        let (s, id) = (store.clone(), entry.alert_id.clone());
        let sent = match blocking(move || s.alert(&id)).await? {
            Some(alert) => self.webhook.post(&payload(&alert)).await,
            None => Ok(()),
        };
        let s = store.clone();
        if let Err(e) = sent {
            entry.attempts += 1;
            metrics::counter!("flywheel_webhook_failures_total").increment(1);
            tracing::warn!(alert = %entry.alert_id, attempt = entry.attempts, error = %e, "webhook attempt failed");
            if entry.attempts < self.attempts {
                let wait = backoff(self.backoff, entry.attempts - 1);
                entry.next_attempt_ms = unix_ms(SystemTime::now() + wait);
                blocking(move || s.requeue_webhook(&entry)).await?;
                return Ok(false);
            }
            tracing::error!(alert = %entry.alert_id, attempts = entry.attempts, "webhook gave up on the alert");
        }
        blocking(move || s.dequeue_webhook(&entry.alert_id)).await?;
        Ok(true)
    }
}

/// `first`, doubled for each attempt already made, at most [`MAX_BACKOFF`].
fn backoff(first: Duration, attempt: u32) -> Duration {
    first
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(MAX_BACKOFF)
}

/// Slack reads `text`; other receivers get the alert's fields beside it.
pub fn payload(alert: &AlertRecord) -> Value {
    json!({
        "text": format!("Flywheel {} alert: {}", alert.kind, alert.message),
        "alert_id": alert.id,
        "at": alert.at,
        "kind": alert.kind,
        "alias": alert.alias,
        "version": alert.version,
        "metric": alert.metric,
        "value": alert.value,
        "threshold": alert.threshold,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let first = Duration::from_millis(500);
        assert_eq!(backoff(first, 0), first);
        assert_eq!(backoff(first, 2), Duration::from_secs(2));
        assert_eq!(backoff(first, 40), MAX_BACKOFF);
    }

    fn alert(id: &str) -> AlertRecord {
        serde_json::from_value(json!({
            "id": id, "at": "t", "kind": "evaluation", "alias": "triage",
            "version": "base", "metric": "accuracy", "value": 0.5, "threshold": 0.9,
            "message": "m", "state": "open", "acknowledged_by": null, "acknowledged_at": null
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_refused_alert_is_retried_after_its_backoff_then_given_up() {
        let parts = crate::testing::parts("");
        // Nothing listens on port 1: every attempt is refused at once.
        let config = EvaluationConfig {
            webhook_url: Some("http://127.0.0.1:1/hook".into()),
            webhook_attempts: 2,
            webhook_backoff_ms: 60_000,
            ..EvaluationConfig::default()
        };
        let hook = AlertHook::new(&config).unwrap();
        let delivery = hook.delivery().unwrap();
        hook.raise(&*parts.store, &alert("alert_1")).unwrap();
        assert_eq!(
            parts.store.alert("alert_1").unwrap(),
            Some(alert("alert_1"))
        );

        assert_eq!(delivery.step(&parts.store).await.unwrap(), Next::Wait);
        let queued = parts.store.queued_webhooks(10).unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].attempts, 1);
        let now = unix_ms(SystemTime::now());
        assert!(queued[0].next_attempt_ms > now + 50_000, "{queued:?}");
        // Not due yet: a step leaves it alone.
        delivery.step(&parts.store).await.unwrap();
        assert_eq!(parts.store.queued_webhooks(10).unwrap(), queued);

        // Due again: the second attempt is the last.
        parts
            .store
            .requeue_webhook(&QueuedWebhook {
                next_attempt_ms: 0,
                ..queued[0].clone()
            })
            .unwrap();
        delivery.step(&parts.store).await.unwrap();
        assert!(parts.store.queued_webhooks(10).unwrap().is_empty());
        assert!(parts.store.alert("alert_1").unwrap().is_some());
    }

    #[test]
    fn without_a_url_alerts_are_only_stored() {
        let parts = crate::testing::parts("");
        let hook = AlertHook::new(&EvaluationConfig::default()).unwrap();
        assert!(hook.delivery().is_none());
        hook.raise(&*parts.store, &alert("alert_2")).unwrap();
        assert!(parts.store.alert("alert_2").unwrap().is_some());
        assert!(parts.store.queued_webhooks(10).unwrap().is_empty());
    }
}
