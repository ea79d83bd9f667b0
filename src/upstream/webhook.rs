//! Posting JSON to a webhook (alerts to Slack or any receiver that takes
//! `{"text": …}`): one pooled client, one attempt per call; the caller
//! decides about retries.

use std::time::Duration;

/// Longest a webhook may take to answer one attempt.
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Webhook {
    http: reqwest::Client,
    url: reqwest::Url,
}

impl Webhook {
    pub fn new(url: &str) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| format!("webhook: cannot build HTTP client: {e}"))?;
        let url = reqwest::Url::parse(url).map_err(|e| format!("webhook URL: {e}"))?;
        Ok(Self { http, url })
    }

    /// One POST; an error says why it did not get a 2xx.
    pub async fn post(&self, body: &serde_json::Value) -> Result<(), String> {
        let response = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("answered {}", response.status()))
        }
    }
}
