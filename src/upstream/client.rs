//! Sending one request to a provider: retries before anything reached the
//! client, then the reply with its first body bytes already in hand.

use super::azure::{self, Azure};
use super::errors::{error_from_reply, transport_error};
use super::fine_tuning::FineTuningError;
use super::retry::{RetryDecision, backoff, retry_after};
use super::transport::{ByteStream, Payload, Transport, TransportError};
use crate::config::{Config, ProviderConfig, Secrets};
use crate::openai::ApiError;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri, header};
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, timeout_at};

pub use super::transport::BodyStream;

/// The path of chat completions under a provider's base URL.
pub const CHAT_PATH: &str = "chat/completions";
/// Where a Responses-API request goes, under the provider's base URL.
pub const RESPONSES_PATH: &str = "responses";

pub struct Provider {
    pub name: Arc<str>,
    base_url: String,
    /// `{base_url}/chat/completions`, parsed once: URL parsing showed up in
    /// the request path's profile.
    chat_uri: Uri,
    /// Our provider key as the provider reads it (`Authorization: Bearer
    /// <key>`, or Azure's `api-key`), built once, marked sensitive.
    auth: Option<(HeaderName, HeaderValue)>,
    /// The variable `auth` is read from, when one is named.
    key_env: Option<String>,
    /// An Azure provider's Entra ID tokens, renewed in the background
    /// (`run_token_renewal`), instead of `auth`.
    entra: Option<Arc<azure::entra::Entra>>,
    /// Azure OpenAI's URL shapes and auth, for a provider with `kind = "azure"`.
    pub(super) azure: Option<Azure>,
    /// Azure Resource Manager access, when the provider deploys its
    /// fine-tuned models itself.
    pub(super) management: Option<azure::management::Management>,
    /// The Files and fine-tuning calls, which are not relayed.
    http: reqwest::Client,
    /// Chat completions and pass-through.
    relay: Transport,
    pub first_byte_timeout: Duration,
    pub total_timeout: Duration,
    pub max_retries: u32,
    max_retry_wait: Duration,
    /// `max_answer_bytes`: the most of an answer read whole.
    max_answer_bytes: usize,
    /// With `lora = true`: the adapters Flywheel registered on it, so one
    /// the server forgot is loaded again (`lora.rs`).
    pub(super) adapters: Option<super::lora::Adapters>,
}

/// What to send; `path` is relative to the provider's base URL (`chat/completions`).
pub struct UpstreamRequest<'a> {
    pub method: Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The client's own provider key, used instead of ours when pass-through is on.
    pub client_key: Option<&'a SecretString>,
    /// The model the body names: an Azure deployment, which the
    /// deployments URL style puts in the path.
    pub model: Option<&'a str>,
}

impl<'a> UpstreamRequest<'a> {
    /// A chat completion: `body` POSTed to `chat/completions` with
    /// `headers`, under the client's own key when it brought one.
    pub fn chat(headers: HeaderMap, body: Bytes, client_key: Option<&'a SecretString>) -> Self {
        Self {
            method: Method::POST,
            path: CHAT_PATH,
            query: None,
            headers,
            body,
            client_key,
            model: None,
        }
    }

    /// The same request, for `model` (an Azure provider's deployment).
    pub fn for_model(self, model: &'a str) -> Self {
        Self {
            model: Some(model),
            ..self
        }
    }

    /// A Responses-API request: `body` POSTed to `responses`, otherwise
    /// sent as a chat completion is.
    pub fn responses(
        headers: HeaderMap,
        body: Bytes,
        client_key: Option<&'a SecretString>,
    ) -> Self {
        Self {
            path: RESPONSES_PATH,
            ..Self::chat(headers, body, client_key)
        }
    }
}

/// A successful (2xx) reply whose first body bytes already arrived.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// `None` when the body was empty.
    pub first: Option<Bytes>,
    pub rest: BodyStream,
    pub retries: u32,
    /// The provider's `max_answer_bytes`: the most of the body read whole.
    pub max_bytes: usize,
}

/// A reply read to its end, or as far as it came.
pub struct Collected {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Why the body is not whole, when it is not.
    pub cut: Option<Cut>,
}

/// Why a reply's body stopped short.
#[derive(Debug)]
pub enum Cut {
    /// The connection broke off.
    Broken(std::io::Error),
    /// The deadline came first.
    TimedOut,
    /// The body passed `max_answer_bytes` (the limit); the rest was not read.
    TooLarge(usize),
}

impl Reply {
    /// Reads the rest of the body until `deadline`: the one way a whole
    /// answer is read — the proxy's unary replies, the shadow copies and
    /// the evaluations' examples.
    pub async fn collect(self, deadline: Instant) -> Collected {
        let Reply {
            status,
            headers,
            first,
            mut rest,
            max_bytes,
            ..
        } = self;
        let mut body = BytesMut::from(first.unwrap_or_default().as_ref());
        let cut = loop {
            if body.len() > max_bytes {
                break Some(Cut::TooLarge(max_bytes));
            }
            match timeout_at(deadline, rest.next()).await {
                Ok(Some(Ok(chunk))) => body.extend_from_slice(&chunk),
                Ok(None) => break None,
                Ok(Some(Err(e))) => break Some(Cut::Broken(e)),
                Err(_) => break Some(Cut::TimedOut),
            }
        };
        Collected {
            status,
            headers,
            body: body.freeze(),
            cut,
        }
    }
}

impl Provider {
    /// The provider `config` describes, with its credentials from `secrets`.
    pub fn new(config: &ProviderConfig, secrets: &Secrets) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(config.connect_timeout_s))
            .pool_max_idle_per_host(4096)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| format!("provider `{}`: cannot build HTTP client: {e}", config.name))?;
        // Read as config validation reads it: the URL parser accepts (and
        // percent-encodes, or writes in punycode) what a request URI
        // would refuse as written.
        let parsed = reqwest::Url::parse(&config.base_url)
            .map_err(|e| format!("provider `{}`: base_url: {e}", config.name))?;
        let base_url = parsed.as_str().trim_end_matches('/').to_string();
        let azure = Azure::of(config);
        let chat_uri: Uri = match &azure {
            Some(a) => a.url(&base_url, CHAT_PATH, None, None),
            None => format!("{base_url}/{CHAT_PATH}"),
        }
        .parse()
        .map_err(|e| format!("provider `{}`: base_url: {e}", config.name))?;
        let token_http = match &config.entra {
            Some(e) if e.managed_identity => {
                azure::entra::host_client(Duration::from_secs(config.connect_timeout_s))
                    .map_err(|e| format!("provider `{}`: {e}", config.name))?
            }
            _ => http.clone(),
        };
        let relay = Transport::new(
            &chat_uri,
            Duration::from_secs(config.connect_timeout_s),
            &hyper_util::client::proxy::matcher::Matcher::from_system(),
            &http,
        )
        .map_err(|e| format!("provider `{}`: {e}", config.name))?;
        Ok(Self {
            name: config.name.as_str().into(),
            base_url,
            chat_uri,
            auth: secrets
                .provider_keys
                .get(&config.name)
                .and_then(|k| authorization(azure.as_ref(), k)),
            key_env: config
                .api_key_env
                .clone()
                .or_else(|| config.bearer_token_env.clone()),
            entra: config.entra.as_ref().map(|e| {
                Arc::new(azure::entra::Entra::new(
                    &config.name,
                    e,
                    azure::entra::Purpose::Inference,
                    secrets.entra_secrets.get(&config.name).cloned(),
                    &secrets.managed_identity,
                    token_http.clone(),
                ))
            }),
            management: azure::management::Management::of(config, secrets, &http, &token_http),
            azure,
            http,
            relay,
            first_byte_timeout: Duration::from_secs(config.first_byte_timeout_s),
            total_timeout: Duration::from_secs(config.timeout_s),
            max_retries: config.max_retries,
            max_retry_wait: Duration::from_secs(config.max_retry_wait_s),
            max_answer_bytes: config.max_answer_bytes,
            adapters: config.lora.then(super::lora::Adapters::default),
        })
    }

    pub fn url(&self, path: &str, query: Option<&str>) -> String {
        self.url_for(path, query, None)
    }

    /// [`Provider::url`] for a request naming `model`, which an Azure
    /// provider's deployments URL style puts in the path.
    fn url_for(&self, path: &str, query: Option<&str>, model: Option<&str>) -> String {
        if let Some(azure) = &self.azure {
            return azure.url(&self.base_url, path, query, model);
        }
        match query {
            Some(q) if !q.is_empty() => format!("{}/{path}?{q}", self.base_url),
            _ => format!("{}/{path}", self.base_url),
        }
    }

    /// Sends with retries on connect errors, 429 and 5xx, honouring
    /// `retry-after`, as long as `deadline` allows. Nothing has reached the
    /// client while this runs, so a retry is invisible to it.
    pub async fn send(
        &self,
        req: UpstreamRequest<'_>,
        deadline: Instant,
    ) -> Result<Reply, ApiError> {
        self.send_retrying(req, deadline, self.max_retries).await
    }

    /// As [`Provider::send`], with at most `max_retries` retries (a
    /// candidate that can fall back to production gets none).
    pub async fn send_retrying(
        &self,
        req: UpstreamRequest<'_>,
        deadline: Instant,
        max_retries: u32,
    ) -> Result<Reply, ApiError> {
        let mut retries = 0;
        let mut reloaded = false;
        loop {
            let failure = match self.attempt(&req, deadline).await {
                Ok(reply) => return Ok(Reply { retries, ..reply }),
                Err(Failure::Status(r)) if self.adapters.is_some() && r.status() == 404 => {
                    // A LoRA server that restarted forgot its adapters:
                    // load the one asked for again, once, and resend.
                    match self.reload_forgotten(r, deadline, reloaded).await {
                        Ok(()) => {
                            reloaded = true;
                            continue;
                        }
                        Err(error) => return Err(error),
                    }
                }
                Err(failure) => failure,
            };
            let decision = match &failure {
                Failure::Status(r) => {
                    RetryDecision::for_status(r.status(), retry_after(r.headers()))
                }
                Failure::Connect(_) | Failure::Body(_) => RetryDecision::Retry(None),
                Failure::Timeout | Failure::Other(_) => RetryDecision::GiveUp,
            };
            let wait = match decision {
                RetryDecision::Retry(hint) if retries < max_retries => {
                    hint.unwrap_or_else(|| backoff(retries))
                }
                _ => return Err(self.fail(failure, deadline).await),
            };
            if wait > self.max_retry_wait || Instant::now() + wait >= deadline {
                return Err(self.fail(failure, deadline).await);
            }
            metrics::counter!("flywheel_upstream_retries_total", "provider" => self.name.to_string())
                .increment(1);
            tracing::debug!(provider = %self.name, retries, ?wait, "retrying upstream request");
            tokio::time::sleep(wait).await;
            retries += 1;
        }
    }

    /// Sends once without retries, streaming `body` to the upstream; for
    /// pass-through routes. Any status comes back as it is.
    pub async fn forward(
        &self,
        req: UpstreamRequest<'_>,
        body: ByteStream,
        deadline: Instant,
    ) -> Result<(StatusCode, HeaderMap, BodyStream), ApiError> {
        let first_byte = deadline.min(Instant::now() + self.first_byte_timeout);
        let response = timeout_at(first_byte, self.transmit(&req, Payload::Stream(body)))
            .await
            .map_err(|_| self.timeout("waiting for response headers"))?
            .map_err(|e| transport_error(&self.name, &e))?;
        let (parts, body) = response.into_parts();
        Ok((parts.status, parts.headers, body))
    }

    /// A request to `path` under the base URL carrying our provider key,
    /// bounded by the provider's whole-request timeout; for the files and
    /// fine-tuning calls, which are not relayed to a client. Without a
    /// valid Entra ID token nothing is sent: the error carries the
    /// identity platform's reason and is transient, so a job's poller
    /// tries again once a renewal has succeeded.
    pub(super) fn authorized(
        &self,
        method: Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, FineTuningError> {
        let builder = self
            .http
            .request(method, self.url(path, None))
            .timeout(self.total_timeout);
        match self.our_authorization() {
            Ok(Some((name, value))) => Ok(builder.header(name, value)),
            Ok(None) => Ok(builder),
            Err(why) => Err(FineTuningError::Transport {
                provider: self.name.to_string(),
                detail: format!("not sent: {why}"),
            }),
        }
    }

    /// Our credentials as the provider reads them, or why there are none
    /// to send.
    fn our_authorization(&self) -> Result<Option<(HeaderName, HeaderValue)>, String> {
        match &self.entra {
            Some(entra) => Ok(Some((header::AUTHORIZATION, entra.header()?))),
            None => Ok(self.auth.clone()),
        }
    }

    /// How this provider's requests are signed, and whether they can be now.
    pub fn signing(&self) -> super::Signing {
        use super::Signing;
        if let Some(entra) = &self.entra {
            return Signing::entra(entra);
        }
        match (&self.key_env, &self.auth) {
            (None, _) => Signing::none(),
            (Some(_), Some(_)) => Signing::key(None),
            (Some(var), None) => Signing::key(Some(format!("the variable `{var}` is not set"))),
        }
    }

    /// How the management API (deploying fine-tuned models) is signed in
    /// to, when this provider deploys them itself.
    pub fn management_signing(&self) -> Option<super::Signing> {
        self.management.as_ref().map(|m| m.signing())
    }

    /// Keeps this provider's Entra ID tokens valid until `stop` (the data
    /// plane's and the management API's), when it has `[providers.entra]`;
    /// returns at once otherwise.
    pub async fn run_token_renewal(&self, stop: tokio_util::sync::CancellationToken) {
        let sources = [
            self.entra.clone(),
            self.management.as_ref().and_then(|m| m.entra()),
        ];
        let renewals = sources
            .into_iter()
            .flatten()
            .map(|entra| entra.run(stop.clone()));
        futures_util::future::join_all(renewals).await;
    }

    /// One request as `req` describes it, with our provider key unless
    /// the client brought its own.
    async fn transmit(
        &self,
        req: &UpstreamRequest<'_>,
        payload: Payload,
    ) -> Result<Response<BodyStream>, TransportError> {
        let mut headers = req.headers.clone();
        let authorization = match req.client_key {
            Some(key) => authorization(self.azure.as_ref(), key),
            None => self
                .our_authorization()
                .map_err(TransportError::Credentials)?,
        };
        if let Some((name, value)) = authorization {
            headers.insert(name, value);
        }
        // What reqwest, which sent these before, adds when the client did not.
        if !headers.contains_key(header::ACCEPT) {
            headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        }
        // Azure's dated routes name the deployment in the path; every other
        // chat completion goes to the URI parsed once.
        let uri = if req.path == CHAT_PATH
            && req.query.is_none()
            && self.azure.as_ref().is_none_or(|a| !a.dated())
        {
            self.chat_uri.clone()
        } else {
            self.url_for(req.path, req.query, req.model)
                .parse()
                .map_err(|e: http::uri::InvalidUri| TransportError::Address(e.to_string()))?
        };
        self.relay
            .send(req.method.clone(), uri, headers, payload)
            .await
    }

    async fn attempt(
        &self,
        req: &UpstreamRequest<'_>,
        deadline: Instant,
    ) -> Result<Reply, Failure> {
        let first_byte = deadline.min(Instant::now() + self.first_byte_timeout);
        let response = timeout_at(
            first_byte,
            self.transmit(req, Payload::Full(req.body.clone())),
        )
        .await
        .map_err(|_| Failure::Timeout)?
        .map_err(|e| {
            if e.is_connect() {
                Failure::Connect(e)
            } else {
                Failure::Other(e)
            }
        })?;
        if !response.status().is_success() {
            return Err(Failure::Status(response));
        }
        let (parts, mut rest) = response.into_parts();
        let (status, headers) = (parts.status, parts.headers);
        let first = match timeout_at(first_byte, rest.next()).await {
            Err(_) => return Err(Failure::Timeout),
            // A connection that dies before the first byte is as good as refused.
            Ok(Some(Err(e))) => return Err(Failure::Body(e)),
            Ok(Some(Ok(bytes))) => Some(bytes),
            Ok(None) => None,
        };
        Ok(Reply {
            status,
            headers,
            first,
            rest,
            retries: 0,
            max_bytes: self.max_answer_bytes,
        })
    }

    /// Counted as every upstream error the client sees.
    pub(super) fn count_error(&self, kind: &'static str) {
        metrics::counter!("flywheel_upstream_errors_total", "provider" => self.name.to_string(), "kind" => kind)
            .increment(1);
    }

    /// The error the client sees once retrying is over.
    async fn fail(&self, failure: Failure, deadline: Instant) -> ApiError {
        let error = match failure {
            Failure::Status(response) => {
                error_from_reply(&self.name, response, deadline, self.azure.is_some()).await
            }
            Failure::Timeout => self.timeout("waiting for the first byte"),
            Failure::Connect(e) | Failure::Other(e) => transport_error(&self.name, &e),
            Failure::Body(e) => ApiError::UpstreamUnreachable {
                provider: self.name.to_string(),
                detail: format!("the connection closed before any data: {e}"),
            },
        };
        let kind = match &error {
            ApiError::UpstreamTimeout { .. } => "timeout",
            ApiError::UpstreamStatus(_) => "status",
            _ => "unreachable",
        };
        self.count_error(kind);
        error
    }

    pub fn timeout(&self, phase: &'static str) -> ApiError {
        ApiError::UpstreamTimeout {
            provider: self.name.to_string(),
            phase,
            seconds: self.first_byte_timeout.as_secs(),
        }
    }
}

/// Why one attempt did not yield a reply.
enum Failure {
    /// A non-2xx status; its body is read only if it goes to the client.
    Status(Response<BodyStream>),
    Timeout,
    Connect(TransportError),
    Other(TransportError),
    Body(std::io::Error),
}

/// The header carrying `key` as the provider reads it: `Authorization:
/// Bearer <key>`, or as an Azure provider is configured; a sensitive
/// value (never logged).
fn authorization(azure: Option<&Azure>, key: &SecretString) -> Option<(HeaderName, HeaderValue)> {
    if let Some(azure) = azure {
        return azure.auth(key);
    }
    let mut value = HeaderValue::try_from(format!("Bearer {}", key.expose_secret())).ok()?;
    value.set_sensitive(true);
    Some((header::AUTHORIZATION, value))
}

/// Every configured provider, by index (`None` for a trainer, which
/// serves nothing), and the default one.
pub struct Upstreams {
    providers: Vec<Option<Provider>>,
    default: usize,
}

impl Upstreams {
    pub fn new(config: &Config, secrets: &Secrets) -> Result<Self, String> {
        let providers = config
            .providers
            .iter()
            .map(|p| p.serves().then(|| Provider::new(p, secrets)).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        let default_name = &config.default_provider().name;
        let default = providers
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| *p.name == **default_name))
            .unwrap_or(0);
        Ok(Self { providers, default })
    }

    /// Keeps every Azure provider's Entra ID token valid until `stop`.
    pub async fn renew_tokens(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let renewals = self
            .providers
            .iter()
            .flatten()
            .map(|p| p.run_token_renewal(stop.clone()));
        futures_util::future::join_all(renewals).await;
    }

    pub fn get(&self, index: usize) -> Option<&Provider> {
        self.providers.get(index).and_then(Option::as_ref)
    }

    pub fn by_name(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().flatten().find(|p| &*p.name == name)
    }

    pub fn default_provider(&self) -> Option<&Provider> {
        self.get(self.default)
    }

    pub fn len(&self) -> usize {
        self.providers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_is_read_as_config_validation_reads_it() {
        let toml = r#"
            name = "p"
            base_url = "http://exämple.test/open ai/v1/"
        "#;
        let config: ProviderConfig = toml::from_str(toml).unwrap();
        let provider = Provider::new(&config, &Secrets::default()).unwrap();
        assert_eq!(
            provider.chat_uri.to_string(),
            "http://xn--exmple-cua.test/open%20ai/v1/chat/completions"
        );
        assert_eq!(
            provider.url("files", Some("purpose=fine-tune")),
            "http://xn--exmple-cua.test/open%20ai/v1/files?purpose=fine-tune"
        );
    }
}
