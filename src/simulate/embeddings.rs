//! `POST /v1/embeddings`: deterministic unit vectors from a hash of the
//! text, so pass-through can be checked byte for byte.

use super::wire;
use axum::response::{IntoResponse, Json, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const DIMENSIONS: usize = 16;

pub async fn create(body: axum::body::Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return wire::error(
            400,
            "invalid_request_error",
            "The body is not valid JSON.",
            None,
            None,
        );
    };
    let inputs: Vec<String> = match &request["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if items.iter().all(Value::is_string) && !items.is_empty() => items
            .iter()
            .filter_map(|i| i.as_str().map(String::from))
            .collect(),
        _ => {
            return wire::error(
                400,
                "invalid_request_error",
                "`input` must be a string or an array of strings.",
                Some("input"),
                None,
            );
        }
    };
    let model = request["model"]
        .as_str()
        .unwrap_or("text-embedding-3-small");
    let tokens: usize = inputs.iter().map(|i| i.split_whitespace().count()).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| json!({"object": "embedding", "index": index, "embedding": vector(text)}))
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    Json(body).into_response()
}

fn vector(text: &str) -> Vec<f32> {
    let digest = Sha256::digest(text.as_bytes());
    let raw: Vec<f32> = digest
        .iter()
        .take(DIMENSIONS)
        .map(|b| f32::from(*b) / 255.0 - 0.5)
        .collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    raw.iter().map(|x| x / norm).collect()
}
