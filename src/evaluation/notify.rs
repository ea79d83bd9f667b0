//! Evaluation alerts to `evaluation.webhook_url`: a bounded queue (a full
//! one drops and counts, so raising an alert never waits) and a delivery
//! service that POSTs each alert as Slack-compatible JSON, retrying with
//! exponential backoff up to `evaluation.webhook_attempts` attempts. Each
//! failed attempt counts in `flywheel_webhook_failures_total`.

use crate::config::EvaluationConfig;
use crate::service::{Next, Service, periodic};
use crate::store::AlertRecord;
use crate::upstream::Webhook;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Alerts waiting for the webhook.
const QUEUE: usize = 256;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The sending side, kept in the application state.
pub struct AlertHook {
    tx: Option<mpsc::Sender<AlertRecord>>,
    /// Taken once by the application when it starts its services.
    delivery: Mutex<Option<Delivery>>,
}

pub struct Delivery {
    /// Only the service's one step at a time holds it.
    rx: tokio::sync::Mutex<mpsc::Receiver<AlertRecord>>,
    webhook: Webhook,
    attempts: u32,
    backoff: Duration,
}

impl AlertHook {
    /// Without a webhook URL, alerts are only stored.
    pub fn new(config: &EvaluationConfig) -> Result<Self, String> {
        let Some(url) = &config.webhook_url else {
            return Ok(Self {
                tx: None,
                delivery: Mutex::new(None),
            });
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let delivery = Delivery {
            rx: tokio::sync::Mutex::new(rx),
            webhook: Webhook::new(url)?,
            attempts: config.webhook_attempts.max(1),
            backoff: Duration::from_millis(config.webhook_backoff_ms),
        };
        Ok(Self {
            tx: Some(tx),
            delivery: Mutex::new(Some(delivery)),
        })
    }

    /// Queues the alert for the webhook, never waiting.
    pub fn notify(&self, alert: &AlertRecord) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(alert.clone()).is_err() {
            metrics::counter!("flywheel_webhook_dropped_total").increment(1);
            tracing::warn!(alert = %alert.id, "webhook queue full; the alert is stored but not sent");
        }
    }

    /// The delivery service, once; `None` without a webhook.
    pub fn take_delivery(&self) -> Option<Delivery> {
        self.delivery.lock().ok().and_then(|mut d| d.take())
    }
}

impl Delivery {
    /// Sends queued alerts until shutdown (which also cuts a backoff
    /// short).
    pub async fn run(self, shutdown: CancellationToken) {
        let delivery = Arc::new(self);
        periodic(Service::on_wake("alert-webhook", None), shutdown, || {
            let delivery = delivery.clone();
            async move { delivery.step().await }
        })
        .await;
    }

    /// The service's step: waits for the next alert and delivers it.
    /// Failed attempts are counted and logged by [`Delivery::deliver`];
    /// the step itself never fails.
    pub async fn step(&self) -> Result<Next, Infallible> {
        let Some(alert) = self.rx.lock().await.recv().await else {
            return Ok(Next::Stop("the alert queue closed"));
        };
        self.deliver(&alert).await;
        Ok(Next::Again)
    }

    async fn deliver(&self, alert: &AlertRecord) {
        let body = payload(alert);
        for attempt in 0..self.attempts {
            match self.webhook.post(&body).await {
                Ok(()) => return,
                Err(e) => {
                    metrics::counter!("flywheel_webhook_failures_total").increment(1);
                    tracing::warn!(alert = %alert.id, attempt = attempt + 1, error = %e, "webhook attempt failed");
                }
            }
            if attempt + 1 == self.attempts {
                break;
            }
            tokio::time::sleep(backoff(self.backoff, attempt)).await;
        }
        tracing::error!(alert = %alert.id, attempts = self.attempts, "webhook gave up on the alert");
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

    #[tokio::test(start_paused = true)]
    async fn each_step_delivers_one_alert_until_the_queue_closes() {
        let config = EvaluationConfig {
            webhook_url: Some("http://127.0.0.1:1/hook".into()),
            webhook_attempts: 2,
            ..EvaluationConfig::default()
        };
        let hook = AlertHook::new(&config).unwrap();
        let delivery = hook.take_delivery().unwrap();
        let alert: AlertRecord = serde_json::from_value(json!({
            "id": "alert_1", "at": "t", "kind": "evaluation", "alias": "triage",
            "version": "base", "metric": "accuracy", "value": 0.5, "threshold": 0.9,
            "message": "m", "state": "open", "acknowledged_by": null, "acknowledged_at": null
        }))
        .unwrap();
        hook.notify(&alert);
        // Refused twice, with the backoff between: given up, and on.
        assert_eq!(delivery.step().await.unwrap(), Next::Again);
        drop(hook);
        assert_eq!(
            delivery.step().await.unwrap(),
            Next::Stop("the alert queue closed")
        );
    }

    #[test]
    fn without_a_url_alerts_are_only_stored() {
        let hook = AlertHook::new(&EvaluationConfig::default()).unwrap();
        assert!(hook.take_delivery().is_none());
    }
}
