//! A value that satisfies a JSON Schema, filled with what the model
//! concluded: the answer to `response_format: json_schema` (and the
//! Responses API's `text.format`) and the arguments of a tool call.
//!
//! The subset of JSON Schema that OpenAI's structured outputs and the
//! function-calling SDKs generate is honoured: `type` (one or several),
//! `properties` (every property is filled, so `required` and `strict`
//! hold either way), `items` with `minItems`/`maxItems`, `enum`, `const`,
//! `anyOf`/`oneOf` (the first branch that is not `null`), `allOf` (objects
//! merged), `$ref` into `$defs`/`definitions`, string `format`s and
//! `minLength`/`maxLength`, and number bounds. `pattern` is not solved.
//!
//! Fields are filled from their names: one that reads like a threat type
//! (`threat_type`, `category`, `classification`, …) gets the verdict's
//! threat type, a severity-like one (`severity`, `priority`, `risk`) its
//! severity, an explanation-like one (`rationale`, `reason`, `summary`, …)
//! the rationale, anything else the alert excerpt. An `enum` takes the
//! verdict's label when it is one of its values, else its first value.

use serde_json::{Map, Value, json};

/// What the model concluded, to fill fields with.
#[derive(Debug, Clone)]
pub struct Facts {
    pub threat_type: String,
    pub severity: String,
    pub rationale: String,
    /// The start of the alert, for fields that quote it.
    pub excerpt: String,
    /// What an object whose schema names no properties holds.
    pub open_object: Value,
}

/// Nesting beyond this (a recursive `$ref`) is cut short with `null`.
const MAX_DEPTH: usize = 24;

/// A value valid against `schema` (the root, so `$ref`s resolve in it).
pub fn instance(schema: &Value, facts: &Facts) -> Value {
    Filler {
        root: schema,
        facts,
    }
    .fill(schema, None, 0)
}

/// Which of the facts a field's name asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Hint {
    Threat,
    Severity,
    Rationale,
    Excerpt,
    Confidence,
}

fn hint(field: Option<&str>) -> Hint {
    let Some(field) = field else {
        return Hint::Rationale;
    };
    let name = field.to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| name.contains(w));
    if has(&["severity", "priority", "risk", "urgency", "impact"]) {
        Hint::Severity
    } else if has(&["threat", "category", "classification", "tactic", "label"])
        || matches!(name.as_str(), "type" | "kind" | "class")
    {
        Hint::Threat
    } else if has(&["confidence", "probability", "score", "certainty"]) {
        Hint::Confidence
    } else if has(&[
        "rationale",
        "reason",
        "explanation",
        "justification",
        "analysis",
        "summary",
        "description",
        "verdict",
        "answer",
        "recommendation",
        "content",
        "text",
        "message",
    ]) {
        Hint::Rationale
    } else {
        Hint::Excerpt
    }
}

struct Filler<'a> {
    root: &'a Value,
    facts: &'a Facts,
}

impl Filler<'_> {
    fn fill(&self, schema: &Value, field: Option<&str>, depth: usize) -> Value {
        if depth > MAX_DEPTH {
            return Value::Null;
        }
        // `true`, `{}` or anything not an object accepts any value.
        let Some(spec) = schema.as_object().filter(|s| !s.is_empty()) else {
            return self.free(field);
        };
        if let Some(target) = spec
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| self.resolve(r))
        {
            return self.fill(target, field, depth + 1);
        }
        if let Some(value) = spec.get("const") {
            return value.clone();
        }
        if let Some(Value::Array(options)) = spec.get("enum") {
            return self.pick(options, field);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(branches)) = spec.get(key) {
                let branch = branches
                    .iter()
                    .find(|b| b.get("type").and_then(Value::as_str) != Some("null"))
                    .or(branches.first());
                if let Some(branch) = branch {
                    return self.fill(branch, field, depth + 1);
                }
            }
        }
        if let Some(Value::Array(parts)) = spec.get("allOf") {
            let filled: Vec<Value> = parts
                .iter()
                .map(|p| self.fill(p, field, depth + 1))
                .collect();
            if filled.iter().all(Value::is_object) && filled.len() > 1 {
                let merged: Map<String, Value> = filled
                    .into_iter()
                    .filter_map(|v| match v {
                        Value::Object(map) => Some(map),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                return Value::Object(merged);
            }
            if let Some(first) = filled.into_iter().next() {
                return first;
            }
        }
        match kind_of(spec) {
            "object" => self.object(spec, depth),
            "array" => self.array(spec, field, depth),
            "integer" => self.integer(spec, field),
            "number" => self.number(spec, field),
            "boolean" => Value::Bool(self.facts.threat_type != "benign"),
            "null" => Value::Null,
            _ => Value::String(self.string(spec, field)),
        }
    }

    /// `#/$defs/Name` or `#/definitions/Name` (any JSON pointer into the root).
    fn resolve(&self, reference: &str) -> Option<&Value> {
        let pointer = reference.strip_prefix('#')?;
        if pointer.is_empty() {
            return Some(self.root);
        }
        self.root.pointer(pointer)
    }

    /// A field whose schema says nothing: a string, or the open object at
    /// the root.
    fn free(&self, field: Option<&str>) -> Value {
        match field {
            None => self.facts.open_object.clone(),
            Some(_) => Value::String(self.text(hint(field))),
        }
    }

    fn text(&self, hint: Hint) -> String {
        let facts = self.facts;
        match hint {
            Hint::Threat => facts.threat_type.clone(),
            Hint::Severity => facts.severity.clone(),
            Hint::Rationale => facts.rationale.clone(),
            Hint::Excerpt => facts.excerpt.clone(),
            Hint::Confidence => "0.9".to_string(),
        }
    }

    /// The verdict's label when the options hold it, else the first option.
    fn pick(&self, options: &[Value], field: Option<&str>) -> Value {
        let facts = self.facts;
        let wanted = match hint(field) {
            Hint::Severity => vec![&facts.severity, &facts.threat_type],
            _ => vec![&facts.threat_type, &facts.severity],
        };
        let same = |option: &Value, label: &str| {
            option.as_str().is_some_and(|o| {
                o.eq_ignore_ascii_case(label)
                    || o.replace([' ', '-'], "_").eq_ignore_ascii_case(label)
            })
        };
        wanted
            .iter()
            .find_map(|label| options.iter().find(|o| same(o, label)))
            .or(options.first())
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn object(&self, spec: &Map<String, Value>, depth: usize) -> Value {
        let properties = spec.get("properties").and_then(Value::as_object);
        let required: Vec<&str> = spec
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let closed = spec.get("additionalProperties") == Some(&Value::Bool(false));
        if properties.is_none_or(Map::is_empty) && required.is_empty() {
            // No fields named: the open object, unless nothing may be added.
            return if closed || depth > 0 {
                json!({})
            } else {
                self.facts.open_object.clone()
            };
        }
        let mut out = Map::new();
        for (name, property) in properties.into_iter().flatten() {
            out.insert(name.clone(), self.fill(property, Some(name), depth + 1));
        }
        for name in required {
            if !out.contains_key(name) {
                out.insert(name.to_string(), Value::String(self.text(hint(Some(name)))));
            }
        }
        Value::Object(out)
    }

    fn array(&self, spec: &Map<String, Value>, field: Option<&str>, depth: usize) -> Value {
        let bound = |key: &str| spec.get(key).and_then(Value::as_u64);
        let mut count = bound("minItems").unwrap_or(1).max(1);
        if let Some(max) = bound("maxItems") {
            count = count.min(max);
        }
        let items = spec.get("items").unwrap_or(&Value::Bool(true));
        let item = self.fill(items, field, depth + 1);
        let count = usize::try_from(count).unwrap_or(1);
        Value::Array(vec![item; count])
    }

    fn string(&self, spec: &Map<String, Value>, field: Option<&str>) -> String {
        let formatted = match spec.get("format").and_then(Value::as_str) {
            Some("date-time") => Some("2026-01-01T00:00:00Z"),
            Some("date") => Some("2026-01-01"),
            Some("time") => Some("00:00:00Z"),
            Some("email") => Some("analyst@example.com"),
            Some("uri" | "url" | "iri") => Some("https://example.com/"),
            Some("uuid") => Some("00000000-0000-4000-8000-000000000000"),
            Some("ipv4") => Some("192.0.2.1"),
            Some("ipv6") => Some("2001:db8::1"),
            Some("hostname") => Some("host.example.com"),
            _ => None,
        };
        let mut text = formatted.map_or_else(|| self.text(hint(field)), str::to_string);
        let bound = |key: &str| {
            spec.get(key)
                .and_then(Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
        };
        if let Some(max) = bound("maxLength") {
            text = text.chars().take(max).collect();
        }
        if let Some(min) = bound("minLength") {
            let short = min.saturating_sub(text.chars().count());
            text.extend(std::iter::repeat_n('.', short));
        }
        text
    }

    /// The preferred figure for a field, within the schema's bounds.
    fn number(&self, spec: &Map<String, Value>, field: Option<&str>) -> Value {
        let get = |key: &str| spec.get(key).and_then(Value::as_f64);
        let (low, high) = (
            get("minimum").or(get("exclusiveMinimum")),
            get("maximum").or(get("exclusiveMaximum")),
        );
        let preferred = match hint(field) {
            Hint::Confidence if high.is_some_and(|h| h > 1.0) => 90.0,
            Hint::Confidence => 0.9,
            Hint::Severity => self.severity_rank(),
            _ => 1.0,
        };
        let value = within(
            preferred,
            low,
            high,
            get("exclusiveMinimum").is_some(),
            get("exclusiveMaximum").is_some(),
        );
        json!(value)
    }

    fn integer(&self, spec: &Map<String, Value>, field: Option<&str>) -> Value {
        let get = |key: &str| spec.get(key).and_then(Value::as_f64);
        let low = get("minimum")
            .map(f64::ceil)
            .or(get("exclusiveMinimum").map(|m| m.floor() + 1.0));
        let high = get("maximum")
            .map(f64::floor)
            .or(get("exclusiveMaximum").map(|m| m.ceil() - 1.0));
        let preferred = match hint(field) {
            Hint::Confidence => 90.0,
            Hint::Severity => self.severity_rank(),
            _ => 1.0,
        };
        let value = within(preferred, low, high, false, false);
        // Within i64 by the bounds' own range; the cast saturates anyway.
        json!(value.round() as i64)
    }

    /// The severity as 1 (informational) to 5 (critical).
    fn severity_rank(&self) -> f64 {
        let rank = ["informational", "low", "medium", "high", "critical"]
            .iter()
            .position(|s| *s == self.facts.severity)
            .unwrap_or(2);
        f64::from(u8::try_from(rank).unwrap_or(2)) + 1.0
    }
}

/// `preferred` moved into `[low, high]` (open at an exclusive end).
fn within(
    preferred: f64,
    low: Option<f64>,
    high: Option<f64>,
    open_low: bool,
    open_high: bool,
) -> f64 {
    let mut value = preferred;
    if let Some(low) = low
        && (value < low || (open_low && value <= low))
    {
        value = match high {
            Some(high) => (low + high) / 2.0,
            None if open_low => low + 1.0,
            None => low,
        };
    }
    if let Some(high) = high
        && (value > high || (open_high && value >= high))
    {
        value = match low {
            Some(low) => (low + high) / 2.0,
            None if open_high => high - 1.0,
            None => high,
        };
    }
    value
}

/// The schema's type: `type` (the first that is not `null` of a list), or
/// what its keywords imply.
fn kind_of(spec: &Map<String, Value>) -> &str {
    match spec.get("type") {
        Some(Value::String(kind)) => kind,
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|k| *k != "null")
            .unwrap_or("null"),
        _ if spec.contains_key("properties") => "object",
        _ if spec.contains_key("items") => "array",
        _ => "string",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            threat_type: "credential_access".into(),
            severity: "high".into(),
            rationale: "LSASS was dumped.".into(),
            excerpt: "rundll32 comsvcs.dll MiniDump".into(),
            open_object: json!({"threat_type": "credential_access"}),
        }
    }

    #[test]
    fn fields_are_filled_from_the_verdict_by_name() {
        let schema = json!({"type": "object", "additionalProperties": false,
            "required": ["threat_type", "severity", "rationale", "host"],
            "properties": {
                "threat_type": {"type": "string"},
                "severity": {"type": "string", "enum": ["low", "medium", "high"]},
                "rationale": {"type": "string"},
                "host": {"type": "string", "maxLength": 8}}});
        assert_eq!(
            instance(&schema, &facts()),
            json!({"threat_type": "credential_access", "severity": "high",
                   "rationale": "LSASS was dumped.", "host": "rundll32"})
        );
    }

    #[test]
    fn pydantic_shapes_resolve_refs_optionals_and_arrays() {
        // As pydantic writes a model with a nested model, an enum, a list
        // and an Optional field.
        let schema = json!({
            "$defs": {
                "Severity": {"enum": ["Low", "High", "Critical"], "title": "Severity", "type": "string"},
                "Ioc": {"properties": {"value": {"type": "string"}, "score": {"type": "integer", "minimum": 0, "maximum": 10}},
                        "required": ["value", "score"], "type": "object"}
            },
            "properties": {
                "severity": {"$ref": "#/$defs/Severity"},
                "iocs": {"items": {"$ref": "#/$defs/Ioc"}, "type": "array", "minItems": 2},
                "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null},
                "escalate": {"type": "boolean"},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "kind": {"const": "triage"}
            },
            "required": ["severity", "iocs"], "type": "object"});
        let value = instance(&schema, &facts());
        assert_eq!(value["severity"], "High");
        assert_eq!(value["iocs"].as_array().unwrap().len(), 2);
        assert_eq!(value["iocs"][0]["score"], 5, "90 is past the maximum");
        assert!(value["iocs"][0]["value"].is_string());
        assert!(value["note"].is_string());
        assert_eq!(value["escalate"], true);
        assert_eq!(value["confidence"], 0.9);
        assert_eq!(value["kind"], "triage");
    }

    #[test]
    fn open_schemas_get_the_open_object_and_bounds_hold() {
        assert_eq!(
            instance(&json!({"type": "object"}), &facts()),
            facts().open_object
        );
        assert_eq!(instance(&json!({}), &facts()), facts().open_object);
        let schema = json!({"type": "object", "properties": {
            "count": {"type": "integer", "exclusiveMinimum": 5},
            "ratio": {"type": "number", "minimum": 2, "maximum": 4},
            "code": {"type": "string", "minLength": 40},
            "when": {"type": "string", "format": "date-time"},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 0},
            "either": {"type": ["null", "integer"]}}});
        let value = instance(&schema, &facts());
        assert_eq!(value["count"], 6);
        assert_eq!(value["ratio"], 3.0);
        assert!(value["code"].as_str().unwrap().chars().count() >= 40);
        assert_eq!(value["when"], "2026-01-01T00:00:00Z");
        assert_eq!(value["tags"], json!([]));
        assert_eq!(value["either"], 1);
    }

    #[test]
    fn recursive_refs_stop() {
        let schema = json!({"$defs": {"Node": {"type": "object", "properties": {
            "child": {"$ref": "#/$defs/Node"}}, "required": ["child"]}},
            "$ref": "#/$defs/Node"});
        let value = instance(&schema, &facts());
        assert!(value["child"]["child"].is_object());
    }
}
