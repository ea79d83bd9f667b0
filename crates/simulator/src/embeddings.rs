//! `POST /v1/embeddings`: deterministic unit vectors from a hash of the
//! text, so pass-through can be checked value for value. Honours
//! `encoding_format: "base64"`, which the official SDKs ask for by default
//! and decode themselves.

use super::wire::{ApiError, kind_of};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// Length of every vector unless `dimensions` asks for fewer.
const DIMENSIONS: usize = 16;

pub async fn create(body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let body =
        body.map_err(|r| ApiError::new(r.status(), "invalid_request_error", r.body_text()))?;
    let request: Value = serde_json::from_slice(&body)
        .map_err(|_| ApiError::invalid("We could not parse the JSON body of your request."))?;
    let request = request
        .as_object()
        .ok_or_else(|| ApiError::invalid("The request body must be a JSON object."))?;
    let model = match request.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        None | Some(Value::Null) | Some(Value::String(_)) => {
            return Err(ApiError::invalid("you must provide a model parameter").param("model"));
        }
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "Invalid type for 'model': expected a string, but got {} instead.",
                kind_of(other)
            ))
            .param("model")
            .code("invalid_type"));
        }
    };
    let inputs = inputs(request)?;
    let dimensions = dimensions(request)?;
    let base64 = match request.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "Invalid value for 'encoding_format': {other}. Supported values are: 'float' and 'base64'."
            ))
            .param("encoding_format")
            .code("invalid_value"));
        }
    };
    let tokens: usize = inputs
        .iter()
        .map(|i| i.split_whitespace().count().max(1))
        .sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let vector = vector(text, dimensions);
            let embedding = if base64 {
                json!(encode_base64(&vector))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}

/// `input` as texts: a string, an array of strings, or token arrays (which
/// stand for their own JSON text, being deterministic all the same).
fn inputs(request: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let invalid = || {
        ApiError::invalid(
            "'input' must be a non-empty string, an array of non-empty strings, or token arrays.",
        )
        .param("input")
    };
    let is_tokens = |v: &Value| {
        v.as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_u64))
    };
    match request.get("input") {
        None | Some(Value::Null) => Err(ApiError::invalid("Missing required parameter: 'input'.")
            .param("input")
            .code("missing_required_parameter")),
        Some(Value::String(s)) if !s.is_empty() => Ok(vec![s.clone()]),
        Some(tokens) if is_tokens(tokens) => Ok(vec![tokens.to_string()]),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|item| match item {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                tokens if is_tokens(tokens) => Ok(tokens.to_string()),
                _ => Err(invalid()),
            })
            .collect(),
        Some(_) => Err(invalid()),
    }
}

fn dimensions(request: &Map<String, Value>) -> Result<usize, ApiError> {
    match request.get("dimensions") {
        None | Some(Value::Null) => Ok(DIMENSIONS),
        Some(v) => v
            .as_u64()
            .and_then(|d| usize::try_from(d).ok())
            .filter(|d| (1..=DIMENSIONS).contains(d))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "Invalid 'dimensions': expected an integer between 1 and {DIMENSIONS}, got {v}."
                ))
                .param("dimensions")
            }),
    }
}

/// A unit vector from the text's SHA-256: equal texts, equal vectors.
fn vector(text: &str, dimensions: usize) -> Vec<f32> {
    let digest = Sha256::digest(text.as_bytes());
    let raw: Vec<f32> = digest
        .iter()
        .take(dimensions)
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

/// The vector as OpenAI sends it for `encoding_format: "base64"`: little-endian
/// f32s, standard base64 with padding. Written out here rather than taking a
/// dependency for twenty lines.
fn encode_base64(vector: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_deterministic_unit_vectors() {
        let a = vector("mimikatz on DC01", DIMENSIONS);
        assert_eq!(a, vector("mimikatz on DC01", DIMENSIONS));
        assert_ne!(a, vector("benign backup job", DIMENSIONS));
        assert_eq!(a.len(), DIMENSIONS);
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5);
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        // 1.0f32 is 00 00 80 3f little-endian.
        assert_eq!(encode_base64(&[1.0]), "AACAPw==");
        assert_eq!(encode_base64(&[1.0, 1.0, 1.0]), "AACAPwAAgD8AAIA/");
        assert_eq!(encode_base64(&[]), "");
    }
}
