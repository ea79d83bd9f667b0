//! `x-flywheel-feedback`: the feedback fields as an RFC 8941 dictionary,
//! e.g. `id="inf_01J…", rating=4, threat_type="malware", severity="high"`.

use super::FeedbackRequest;
use crate::openai::{ApiError, parse_json};
use serde_json::{Map, Value};

/// Parses the header into the same request the JSON endpoint takes, so
/// both are validated alike. `id` is accepted for `inference_id`.
pub fn parse_header(value: &[u8]) -> Result<FeedbackRequest, ApiError> {
    let malformed = |detail: String| {
        ApiError::invalid(
            format!("`x-flywheel-feedback` is not a valid RFC 8941 dictionary: {detail}"),
            Some("x-flywheel-feedback"),
        )
    };
    let dictionary: sfv::Dictionary = sfv::Parser::new(value)
        .parse_dictionary()
        .map_err(|e| malformed(e.to_string()))?;
    let mut fields = Map::new();
    for (key, entry) in dictionary {
        let sfv::ListEntry::Item(item) = entry else {
            return Err(malformed(format!("`{}` is an inner list", key.as_str())));
        };
        let name = match key.as_str() {
            "id" => "inference_id".to_string(),
            other => other.to_string(),
        };
        fields.insert(name, bare_to_json(&item.bare_item));
    }
    let json = serde_json::to_vec(&Value::Object(fields)).map_err(|e| malformed(e.to_string()))?;
    parse_json(&json)
}

fn bare_to_json(item: &sfv::BareItem) -> Value {
    if let Some(i) = item.as_integer() {
        return Value::from(i64::from(i));
    }
    if let Some(b) = item.as_boolean() {
        return Value::from(b);
    }
    if let Some(s) = item.as_string() {
        return Value::from(s.as_str());
    }
    if let Some(t) = item.as_token() {
        return Value::from(t.as_str());
    }
    if let Some(d) = item.as_decimal() {
        return Value::from(f64::from(d));
    }
    Value::Null
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let r = parse_header(br#"id="inf_01J", rating=4, threat_type="malware", severity=high, approved_for_training"#).unwrap();
        assert_eq!(r.inference_id.as_deref(), Some("inf_01J"));
        assert_eq!((r.rating, r.severity.as_deref()), (Some(4), Some("high")));
        assert_eq!(r.approved_for_training, Some(true));
    }

    #[test]
    fn malformed_headers_and_wrong_types_are_400s() {
        for bad in [
            &b"id=\"x\", rating=="[..],
            b"id=(1 2)",
            b"id=\"x\", rating=\"four\"",
            b"id=\"x\", color=\"red\"",
        ] {
            assert!(
                matches!(parse_header(bad), Err(ApiError::InvalidRequest { .. })),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
