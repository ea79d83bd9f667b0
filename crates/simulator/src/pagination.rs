//! Cursor pages as OpenAI's list routes return them: `after` is the id of
//! the last item the client has, `limit` caps the page, and `has_more` is
//! always present — the SDKs' auto-paginators ask for the next page until
//! it is false, so a page that ignored `after` would loop them forever.

use super::wire::ApiError;
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use serde_json::{Value, json};
use std::collections::HashMap;

/// What a list request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub after: Option<String>,
    pub limit: usize,
}

impl PageRequest {
    /// Reads `after` and `limit` (1–`max`, default `default`) from the query.
    pub fn from_query(
        query: Result<Query<HashMap<String, String>>, QueryRejection>,
        default: usize,
        max: usize,
    ) -> Result<Self, ApiError> {
        let Query(query) = query.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
        let limit = match query.get("limit") {
            None => default,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid(format!(
                        "Invalid 'limit': expected an integer from 1 to {max}, but got '{text}'."
                    ))
                    .param("limit")
                    .code("invalid_value")
                })?,
        };
        Ok(Self {
            after: query.get("after").filter(|a| !a.is_empty()).cloned(),
            limit,
        })
    }

    /// The page of `items` (already in listing order) after the cursor.
    /// An `after` that names no item gives an empty last page, so a client
    /// holding a stale cursor stops rather than starting over.
    pub fn page(&self, items: Vec<(String, Value)>) -> Value {
        let start = match &self.after {
            None => 0,
            Some(after) => items
                .iter()
                .position(|(id, _)| id == after)
                .map_or(items.len(), |i| i + 1),
        };
        let rest: Vec<Value> = items.into_iter().skip(start).map(|(_, v)| v).collect();
        let has_more = rest.len() > self.limit;
        let data: Vec<Value> = rest.into_iter().take(self.limit).collect();
        let first_id = data.first().map(|v| v["id"].clone()).unwrap_or(Value::Null);
        let last_id = data.last().map(|v| v["id"].clone()).unwrap_or(Value::Null);
        json!({"object": "list", "data": data, "has_more": has_more, "first_id": first_id, "last_id": last_id})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Uri;

    fn request(query: &str) -> Result<PageRequest, ApiError> {
        let uri: Uri = format!("/x?{query}").parse().unwrap();
        PageRequest::from_query(Query::try_from_uri(&uri), 20, 100)
    }

    fn items(n: usize) -> Vec<(String, Value)> {
        (0..n)
            .map(|i| (format!("id{i}"), json!({"id": format!("id{i}")})))
            .collect()
    }

    #[test]
    fn pages_follow_the_cursor_to_the_end() {
        let mut seen = Vec::new();
        let mut query = "limit=2".to_string();
        loop {
            let page = request(&query).unwrap().page(items(5));
            for item in page["data"].as_array().unwrap() {
                seen.push(item["id"].as_str().unwrap().to_string());
            }
            if page["has_more"] == false {
                break;
            }
            query = format!("limit=2&after={}", page["last_id"].as_str().unwrap());
        }
        assert_eq!(seen, ["id0", "id1", "id2", "id3", "id4"]);
        let stale = request("after=gone").unwrap().page(items(3));
        assert_eq!(
            (
                stale["data"].as_array().unwrap().len(),
                stale["has_more"].clone()
            ),
            (0, json!(false))
        );
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(
            request("").unwrap(),
            PageRequest {
                after: None,
                limit: 20
            }
        );
        for bad in ["limit=0", "limit=101", "limit=x", "limit=-1"] {
            assert_eq!(
                request(bad).unwrap_err().param.as_deref(),
                Some("limit"),
                "{bad}"
            );
        }
    }
}
