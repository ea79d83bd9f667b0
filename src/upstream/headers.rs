//! Which headers cross the proxy. Client headers go upstream untouched
//! (the SDKs' `X-Stainless-*` among them) except those that are the proxy's
//! own business; upstream headers come back except those that would lie
//! about Flywheel's connection or limits.

use http::{HeaderMap, HeaderName, header};

/// Hop-by-hop headers (RFC 9110 §7.6.1) never cross a proxy.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers for the upstream request. `keep_encoding` is false where the
/// proxy reads the body (chat completions) and true for byte-for-byte
/// pass-through. `keep_account` keeps `OpenAI-Organization`/`-Project`,
/// which only make sense with the client's own key.
pub fn outgoing(incoming: &HeaderMap, keep_encoding: bool, keep_account: bool) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(incoming.len());
    for (name, value) in incoming {
        let n = name.as_str();
        let dropped = HOP_BY_HOP.contains(name)
            || *name == header::HOST
            || *name == header::AUTHORIZATION
            || n == "api-key"
            || *name == header::CONTENT_LENGTH
            || n.starts_with("x-flywheel-")
            || (!keep_encoding && *name == header::ACCEPT_ENCODING)
            || (!keep_account && (n == "openai-organization" || n == "openai-project"));
        if !dropped {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Upstream response headers for the client. The upstream's rate limits are
/// those of Flywheel's provider account, not the client's, so they stay
/// here; its request id is kept under another name.
pub fn relayed(upstream: &HeaderMap, keep_length: bool) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(upstream.len());
    for (name, value) in upstream {
        let n = name.as_str();
        if n == "x-request-id" {
            out.insert("x-upstream-request-id", value.clone());
            continue;
        }
        let dropped = HOP_BY_HOP.contains(name)
            || (!keep_length && *name == header::CONTENT_LENGTH)
            || n.starts_with("x-ratelimit-")
            || n == "openai-organization"
            || *name == header::SET_COOKIE;
        if !dropped {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_credentials_and_proxy_headers_stay_behind() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer fw-x"),
            ("api-key", "fw-y"),
            ("x-flywheel-user", "u"),
            ("x-stainless-lang", "python"),
            ("connection", "keep-alive"),
            ("accept-encoding", "gzip"),
            ("openai-organization", "org"),
            ("content-type", "application/json"),
        ] {
            h.insert(k, v.parse().unwrap());
        }
        let out = outgoing(&h, false, false);
        let names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(out.contains_key("x-stainless-lang") && out.contains_key("content-type"));
        assert!(outgoing(&h, true, true).contains_key("openai-organization"));
    }

    #[test]
    fn upstream_limits_and_ids_are_not_passed_off_as_ours() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-request-id", "req_up"),
            ("x-ratelimit-remaining-requests", "5"),
            ("openai-processing-ms", "12"),
            ("transfer-encoding", "chunked"),
        ] {
            h.insert(k, v.parse().unwrap());
        }
        let out = relayed(&h, false);
        assert_eq!(out.get("x-upstream-request-id").unwrap(), "req_up");
        assert!(out.contains_key("openai-processing-ms"));
        assert_eq!(out.len(), 2);
    }
}
