//! Reading a JSON document a service publishes (an identity platform's
//! signing keys): one pooled client, one GET per call with a bounded wait,
//! through the proxies the environment names.

use serde::de::DeserializeOwned;
use std::time::Duration;

/// Longest one fetch may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Published {
    http: reqwest::Client,
    url: String,
}

impl Published {
    pub fn new(url: String) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build the HTTP client for {url}: {e}"))?;
        Ok(Self { http, url })
    }

    /// The document, or why it could not be had (naming the URL).
    pub async fn fetch<T: DeserializeOwned>(&self) -> Result<T, String> {
        let url = &self.url;
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("cannot fetch {url}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("{url} answered {status}"));
        }
        response
            .json()
            .await
            .map_err(|e| format!("{url} sent no readable document: {e}"))
    }
}
