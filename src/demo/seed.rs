//! Demo traffic: real endpoint alerts (SigmaHQ detection rules, DRL 1.1,
//! see NOTICE) sent through the proxy over HTTP like a chat app would,
//! with an 80/20 split between the two versions, analysts' ratings, and an
//! analyst's labels and approvals (the alerts' own rule-derived labels,
//! with the answer the model should have given wherever it said otherwise),
//! so every page of the admin UI has something to show and a dataset can
//! be built at once.

#![expect(
    clippy::disallowed_types,
    reason = "the seed is a client of the proxy over HTTP, like any chat app"
)]

use crate::evaluation::extract::Extractor;
use crate::registry::{Change, Registry, Request};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const ALERTS: &str = include_str!("alerts.jsonl");

const SYSTEM_PROMPT: &str = "You are a SOC analyst assistant. Triage the Microsoft Defender for Endpoint alert: give its threat type, its severity and a short rationale.";

#[derive(Deserialize)]
struct Alert {
    alert: String,
    threat_type: String,
    severity: String,
}

/// Who the demo's traffic comes from.
pub struct Callers {
    pub client_key: String,
    pub analyst_key: String,
}

/// What seeding did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seeded {
    /// Conversations sent through the proxy.
    pub sent: usize,
    pub approved: usize,
    pub failed: usize,
}

/// Sends `count` alerts through the proxy at `proxy`, rates and reviews
/// them, counting each conversation finished in `done`. Failures are
/// logged; the demo goes on without its seed.
pub async fn seed(
    registry: Arc<Registry>,
    extractor: Arc<Extractor>,
    proxy: SocketAddr,
    callers: Callers,
    count: usize,
    done: Arc<AtomicUsize>,
) -> Seeded {
    if count == 0 {
        return Seeded::default();
    }
    if let Err(e) = split_traffic(&registry) {
        tracing::warn!(error = %e, "demo: could not set the 80/20 split");
    }
    let alerts: Vec<Alert> = ALERTS
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .take(count)
        .collect();
    let Ok(http) = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
    else {
        return Seeded::default();
    };
    let seeder = Arc::new(Seeder {
        http,
        base: format!("http://{proxy}"),
        callers,
        extractor,
    });
    let total = alerts.len();
    let results: Vec<_> = futures_util::stream::iter(alerts.into_iter().enumerate())
        .map(|(i, alert)| {
            let (seeder, done) = (seeder.clone(), done.clone());
            async move {
                let result = seeder.one(i, &alert).await;
                done.fetch_add(1, Ordering::Relaxed);
                result
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut approved = Vec::new();
    let mut failed = 0;
    for result in results {
        match result {
            Ok(Some(conversation)) => approved.push(conversation),
            Ok(None) => {}
            Err(e) => {
                failed += 1;
                tracing::warn!(error = %e, "demo: one seeded conversation failed");
            }
        }
    }
    let mut seeded = Seeded {
        sent: total,
        approved: approved.len(),
        failed,
    };
    if let Err(e) = seeder.approve(&approved).await {
        seeded.approved = 0;
        tracing::warn!(error = %e, "demo: could not approve the reviewed conversations");
    }
    tracing::debug!(
        conversations = total,
        approved = seeded.approved,
        "demo: seeded"
    );
    seeded
}

fn split_traffic(registry: &Registry) -> Result<(), crate::registry::RegistryError> {
    let Some(triage) = registry.alias("triage") else {
        return Ok(());
    };
    if triage.version("large").is_none() {
        return Ok(());
    }
    registry.change(Request {
        alias: "triage",
        expected_revision: None,
        actor: "demo",
        reason: "demo: 20% of traffic to the larger model",
        change: Change::Traffic {
            weights: BTreeMap::from([("base".into(), 80.0), ("large".into(), 20.0)]),
            shadow: None,
        },
    })?;
    Ok(())
}

struct Seeder {
    http: reqwest::Client,
    base: String,
    callers: Callers,
    extractor: Arc<Extractor>,
}

impl Seeder {
    /// Posts as a well-behaved client: a 429 is waited out as its
    /// `retry-after-ms` says (the seed's keys are exempt from limits, but
    /// a client that meets one should still wait, not fail).
    async fn post(
        &self,
        key: &str,
        path: &str,
        body: &Value,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(body);
        self.send(request).await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut attempts = 0;
        loop {
            let Some(attempt) = request.try_clone() else {
                return request.send().await;
            };
            let response = attempt.send().await?;
            if response.status() != reqwest::StatusCode::TOO_MANY_REQUESTS || attempts == 600 {
                return Ok(response);
            }
            attempts += 1;
            let wait_ms = response
                .headers()
                .get("retry-after-ms")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(wait_ms.clamp(10, 5_000))).await;
        }
    }

    /// One conversation: the alert, an answer, a rating; two in three are
    /// reviewed by the analyst (labels, quality, and where the answer said
    /// another threat type or severity, the answer it should have given)
    /// and returned for approval.
    async fn one(&self, i: usize, alert: &Alert) -> Result<Option<String>, reqwest::Error> {
        let messages = json!([
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": alert.alert},
        ]);
        let chat = self
            .http
            .post(format!("{}/v1/chat/completions", self.base))
            .bearer_auth(&self.callers.client_key)
            .header("x-flywheel-user", format!("analyst-{}", i % 7 + 1))
            // The simulator's pacing is for people watching; the seed
            // need not wait for it.
            .header("x-sim-token-delay-ms", "0")
            .json(&json!({"model": "triage", "messages": messages}));
        let response = self.send(chat).await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let (inference, conversation) = (
            header("x-flywheel-inference-id"),
            header("x-flywheel-conversation-id"),
        );
        let body: Value = response.json().await?;
        let answer = body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("");
        let stated = self.extractor.extract(answer);
        let right = stated.threat_type.as_deref() == Some(alert.threat_type.as_str());
        let agrees = right && stated.severity.as_deref() == Some(alert.severity.as_str());
        let rating = if right { 4 + i % 2 } else { 1 + i % 2 };
        let thumbs = if right { "up" } else { "down" };
        self.post(
            &self.callers.client_key,
            "/v1/feedback",
            &json!({"inference_id": inference, "rating": rating, "thumbs": thumbs}),
        )
        .await?;
        if i % 3 == 2 {
            return Ok(None);
        }
        let mut review = json!({
            "inference_id": inference,
            "threat_type": alert.threat_type,
            "severity": alert.severity,
            "quality_score": if right { 4 } else { 3 },
        });
        // Labels that contradict the answer need the right answer beside
        // them, or the conversation teaches what the analyst rejected.
        if !agrees {
            review["correction"] = json!(format!(
                "Threat type: {}\nSeverity: {}\nRationale: {}",
                alert.threat_type,
                alert.severity,
                alert.alert.chars().take(300).collect::<String>()
            ));
        }
        self.post(&self.callers.analyst_key, "/v1/feedback", &review)
            .await?;
        Ok(Some(conversation))
    }

    async fn approve(&self, ids: &[String]) -> Result<(), reqwest::Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let path = "/admin/api/conversations/bulk";
        let body = json!({"ids": ids, "action": "approve"});
        self.post(&self.callers.analyst_key, path, &body).await?;
        Ok(())
    }
}
