//! Evaluation alerts to `evaluation.webhook_url`: a bounded queue (a full
//! one drops and counts, so raising an alert never waits) and a delivery
//! service that POSTs each alert as Slack-compatible JSON, retrying with
//! exponential backoff up to `evaluation.webhook_attempts` attempts. Each
//! failed attempt counts in `flywheel_webhook_failures_total`.

use crate::config::EvaluationConfig;
use crate::store::AlertRecord;
use crate::upstream::Webhook;
use serde_json::{Value, json};
use std::sync::Mutex;
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
    rx: mpsc::Receiver<AlertRecord>,
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
            rx,
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
    /// Sends queued alerts until shutdown.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let alert = tokio::select! {
                next = self.rx.recv() => match next {
                    Some(alert) => alert,
                    None => return,
                },
                () = shutdown.cancelled() => return,
            };
            self.deliver(&alert, &shutdown).await;
        }
    }

    async fn deliver(&self, alert: &AlertRecord, shutdown: &CancellationToken) {
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
            tokio::select! {
                () = tokio::time::sleep(backoff(self.backoff, attempt)) => {}
                () = shutdown.cancelled() => return,
            }
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

    #[test]
    fn without_a_url_alerts_are_only_stored() {
        let hook = AlertHook::new(&EvaluationConfig::default()).unwrap();
        assert!(hook.take_delivery().is_none());
    }
}
