//! The part of the Conversations API that the Responses API leans on:
//! `POST /v1/conversations` (with optional `items` and `metadata`), `GET`
//! and `DELETE /v1/conversations/{id}`, and `POST
//! /v1/conversations/{id}/items` (items added). A response created with
//! `conversation` reads the conversation's items in front of its input and
//! then appends its input and output to them, as OpenAI's does; the
//! conversation holds no `instructions`.
//!
//! Conversations live in memory, the newest 4096 of them (see `kept`).

use super::Sim;
use super::kept::Newest;
use super::request::invalid_type;
use super::responses::input_messages;
use super::wire::{self, ApiError, kind_of};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Conversation objects, the newest 4096 (see `kept`).
pub type Conversations = Newest<Conversation>;

pub struct Conversation {
    object: Value,
    /// Its items as chat messages.
    messages: Vec<Value>,
}

impl Newest<Conversation> {
    /// The conversation's items as chat messages.
    pub fn messages(&self, id: &str) -> Option<Vec<Value>> {
        self.read(id, |c| c.messages.clone())
    }

    /// Appends a response's input and output; false when the
    /// conversation is gone.
    pub fn append(&self, id: &str, messages: impl IntoIterator<Item = Value>) -> bool {
        self.update(id, |c| c.messages.extend(messages))
    }

    /// An empty conversation under `id`: for tests.
    #[cfg(test)]
    pub fn insert_empty(&self, id: &str) {
        let object = json!({"id": id, "object": "conversation"});
        let messages = Vec::new();
        self.insert(id.to_string(), Conversation { object, messages });
    }
}

/// The error of a conversation that does not exist (or no longer).
pub fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("Conversation with id '{id}' not found."),
    )
}

pub async fn create(State(sim): State<Sim>, body: Result<Bytes, BytesRejection>) -> Response {
    match created(body) {
        Ok((object, messages)) => {
            let id = object["id"].as_str().unwrap_or_default().to_string();
            sim.conversations.insert(
                id,
                Conversation {
                    object: object.clone(),
                    messages,
                },
            );
            axum::Json(object).into_response()
        }
        Err(error) => error.into_response(),
    }
}

/// The new conversation's object and its items as chat messages; an
/// empty body is an empty conversation.
fn created(body: Result<Bytes, BytesRejection>) -> Result<(Value, Vec<Value>), ApiError> {
    let body =
        body.map_err(|r| ApiError::new(r.status(), "invalid_request_error", r.body_text()))?;
    let request: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|_| ApiError::invalid("We could not parse the JSON body of your request."))?
    };
    let Value::Object(fields) = &request else {
        return Err(ApiError::invalid(format!(
            "Invalid type for request body: expected an object, but got {} instead.",
            kind_of(&request)
        )));
    };
    let messages = match fields.get("items") {
        None | Some(Value::Null) => Vec::new(),
        items => input_messages(items, "items")?,
    };
    let metadata = match fields.get("metadata") {
        None | Some(Value::Null) => json!({}),
        Some(Value::Object(m)) => Value::Object(m.clone()),
        Some(other) => return Err(invalid_type("metadata", "an object", other)),
    };
    let object = json!({
        "id": wire::random_id("conv_"),
        "object": "conversation",
        "created_at": wire::now_unix(),
        "metadata": metadata,
    });
    Ok((object, messages))
}

/// `POST /v1/conversations/{id}/items`: `items` (a non-empty list)
/// appended; the answer lists them, each with an id.
pub async fn add_items(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let added = added_items(body).and_then(|(items, messages)| {
        if sim.conversations.append(&id, messages) {
            Ok(items)
        } else {
            Err(not_found(&id))
        }
    });
    match added {
        Ok(items) => axum::Json(json!({
            "object": "list",
            "first_id": items.first().map(|i| i["id"].clone()),
            "last_id": items.last().map(|i| i["id"].clone()),
            "has_more": false,
            "data": items,
        }))
        .into_response(),
        Err(error) => error.into_response(),
    }
}

/// The items of an add-items request, each given an id, and as chat
/// messages.
fn added_items(body: Result<Bytes, BytesRejection>) -> Result<(Vec<Value>, Vec<Value>), ApiError> {
    let body =
        body.map_err(|r| ApiError::new(r.status(), "invalid_request_error", r.body_text()))?;
    let request: Value = serde_json::from_slice(&body)
        .map_err(|_| ApiError::invalid("We could not parse the JSON body of your request."))?;
    let items = match &request["items"] {
        Value::Array(items) if !items.is_empty() => items.clone(),
        Value::Null => {
            return Err(ApiError::invalid("Missing required parameter: 'items'.").param("items"));
        }
        other => return Err(invalid_type("items", "a non-empty array", other)),
    };
    let messages = input_messages(Some(&request["items"]), "items")?;
    let items = items
        .into_iter()
        .map(|mut item| {
            if let Value::Object(fields) = &mut item {
                fields.insert("id".into(), json!(wire::random_id("msg_")));
                fields.entry("type").or_insert(json!("message"));
            }
            item
        })
        .collect();
    Ok((items, messages))
}

pub async fn retrieve(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    match sim.conversations.read(&id, |c| c.object.clone()) {
        Some(object) => axum::Json(object).into_response(),
        None => not_found(&id).into_response(),
    }
}

pub async fn delete(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    if sim.conversations.remove(&id) {
        axum::Json(json!({"id": id, "object": "conversation.deleted", "deleted": true}))
            .into_response()
    } else {
        not_found(&id).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn made(body: &str) -> Result<(Value, Vec<Value>), ApiError> {
        created(Ok(Bytes::from(body.to_string())))
    }

    #[test]
    fn a_conversation_is_made_empty_or_with_items() {
        let (object, messages) = made("").unwrap();
        assert!(object["id"].as_str().unwrap().starts_with("conv_"));
        assert_eq!(object["object"], "conversation");
        assert_eq!(object["metadata"], json!({}));
        assert!(messages.is_empty());
        let (object, messages) = made(
            r#"{"items": [{"type": "message", "role": "user", "content": "alert"}], "metadata": {"app": "soc"}}"#,
        )
        .unwrap();
        assert_eq!(object["metadata"]["app"], "soc");
        assert_eq!(messages, [json!({"role": "user", "content": "alert"})]);
    }

    #[test]
    fn bad_bodies_name_what_is_wrong() {
        let param = |body: &str| made(body).err().map(|e| (e.status.as_u16(), e.param));
        assert_eq!(param("[]").map(|p| p.0), Some(400));
        assert_eq!(param("{").map(|p| p.0), Some(400));
        assert_eq!(
            param(r#"{"metadata": 1}"#),
            Some((400, Some("metadata".into())))
        );
        assert_eq!(
            param(r#"{"items": [{"role": "robot", "content": "x"}]}"#),
            Some((400, Some("items[0].role".into())))
        );
    }

    #[test]
    fn items_are_added_with_ids_and_read_as_messages() {
        let body = r#"{"items": [{"type": "message", "role": "user", "content": "alert"},
            {"role": "assistant", "content": "noted"}]}"#;
        let (items, messages) = added_items(Ok(Bytes::from(body))).unwrap();
        assert!(
            items
                .iter()
                .all(|i| i["id"].as_str().unwrap().starts_with("msg_"))
        );
        assert!(items.iter().all(|i| i["type"] == "message"));
        assert_eq!(
            messages,
            [
                json!({"role": "user", "content": "alert"}),
                json!({"role": "assistant", "content": "noted"})
            ]
        );
        let conversations = Conversations::default();
        conversations.insert_empty("conv_1");
        assert!(conversations.append("conv_1", messages));
        assert_eq!(conversations.messages("conv_1").unwrap().len(), 2);
        let param = |body: &'static str| {
            added_items(Ok(Bytes::from(body)))
                .err()
                .map(|e| (e.status.as_u16(), e.param))
        };
        assert_eq!(param("{}"), Some((400, Some("items".into()))));
        assert_eq!(param(r#"{"items": []}"#), Some((400, Some("items".into()))));
        assert_eq!(
            param(r#"{"items": [{"role": "robot", "content": "x"}]}"#),
            Some((400, Some("items[0].role".into())))
        );
    }
}
