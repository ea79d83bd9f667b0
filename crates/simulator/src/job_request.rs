//! Validation of `POST /v1/fine_tuning/jobs` bodies as OpenAI does it: a 400
//! whose `param` names the field (`suffix`, `hyperparameters.n_epochs`,
//! `method.dpo.hyperparameters.beta`, …). Whether the files exist is the
//! handler's to check, against the uploaded files.

use super::MODELS;
use super::dataset::Shape;
use super::wire::{ApiError, kind_of};
use serde_json::{Map, Value, json};

const FIELDS: &[&str] = &[
    "model",
    "training_file",
    "validation_file",
    "suffix",
    "seed",
    "metadata",
    "hyperparameters",
    "method",
    "integrations",
];

/// The statuses at which `metadata.sim_fail` can make a job fail.
pub const FAIL_POINTS: &[&str] = &["validating_files", "queued", "running"];

/// A hyperparameter: `"auto"` (the simulator chooses) or a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting<T> {
    Auto,
    Set(T),
}

impl<T: Copy + Into<Value>> Setting<T> {
    pub fn json(self) -> Value {
        match self {
            Setting::Auto => json!("auto"),
            Setting::Set(v) => v.into(),
        }
    }

    pub fn or(self, auto: T) -> T {
        match self {
            Setting::Auto => auto,
            Setting::Set(v) => v,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hyperparameters {
    pub n_epochs: Setting<u32>,
    pub batch_size: Setting<u32>,
    pub learning_rate_multiplier: Setting<f64>,
    /// DPO only.
    pub beta: Setting<f64>,
}

impl Default for Hyperparameters {
    fn default() -> Self {
        Self {
            n_epochs: Setting::Auto,
            batch_size: Setting::Auto,
            learning_rate_multiplier: Setting::Auto,
            beta: Setting::Auto,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    pub model: String,
    pub training_file: String,
    pub validation_file: Option<String>,
    pub suffix: Option<String>,
    pub seed: Option<u64>,
    pub metadata: Option<Map<String, Value>>,
    pub method: Shape,
    pub hyperparameters: Hyperparameters,
    /// From `metadata.sim_fail`: the status at which the job is to fail.
    pub sim_fail: Option<String>,
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(message)
        .param(param)
        .code("invalid_value")
}

fn wrong_type(param: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid(format!(
        "Invalid type for '{param}': expected {expected}, but got {} instead.",
        kind_of(got)
    ))
    .param(param)
    .code("invalid_type")
}

fn given<'b>(body: &'b Map<String, Value>, field: &str) -> Option<&'b Value> {
    body.get(field).filter(|v| !v.is_null())
}

fn string(body: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match given(body, field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(wrong_type(field, "a string", other)),
    }
}

fn required(body: &Map<String, Value>, field: &str) -> Result<String, ApiError> {
    string(body, field)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(format!("Missing required parameter: '{field}'."))
                .param(field)
                .code("missing_required_parameter")
        })
}

pub fn parse(body: &[u8]) -> Result<JobRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::invalid("We could not parse the JSON body of your request."))?;
    let Value::Object(body) = value else {
        return Err(ApiError::invalid(format!(
            "Invalid type for request body: expected an object, but got {} instead.",
            kind_of(&value)
        )));
    };
    if let Some(unknown) = body.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::invalid(format!(
            "Unrecognized request argument supplied: {unknown}"
        ))
        .param(unknown.as_str()));
    }
    let model = required(&body, "model")?;
    if !MODELS.contains(&model.as_str()) {
        return Err(invalid(
            "model",
            format!("Model {model} is not available for fine-tuning or does not exist."),
        )
        .code("model_not_available"));
    }
    let (method, hyperparameters) = method(&body)?;
    let metadata = metadata(&body)?;
    let sim_fail = sim_fail(metadata.as_ref())?;
    Ok(JobRequest {
        model,
        training_file: required(&body, "training_file")?,
        validation_file: string(&body, "validation_file")?,
        suffix: suffix(&body)?,
        seed: seed(&body)?,
        metadata,
        method,
        hyperparameters,
        sim_fail,
    })
}

/// 1–64 characters that keep the model name readable and splittable on
/// its colons.
fn suffix(body: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    let Some(suffix) = string(body, "suffix")? else {
        return Ok(None);
    };
    let length = suffix.chars().count();
    if !(1..=64).contains(&length) {
        return Err(invalid(
            "suffix",
            format!("Invalid 'suffix': must be 1 to 64 characters long, got {length}."),
        ));
    }
    if !suffix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(invalid(
            "suffix",
            "Invalid 'suffix': only letters, digits, '-', '_' and '.' are allowed.",
        ));
    }
    Ok(Some(suffix))
}

fn seed(body: &Map<String, Value>) -> Result<Option<u64>, ApiError> {
    match given(body, "seed") {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|s| *s <= 2_147_483_647)
            .map(Some)
            .ok_or_else(|| {
                invalid(
                    "seed",
                    "Invalid 'seed': must be an integer from 0 to 2147483647.",
                )
            }),
        Some(other) => Err(wrong_type("seed", "an integer", other)),
    }
}

/// Up to 16 string values, as OpenAI's metadata.
fn metadata(body: &Map<String, Value>) -> Result<Option<Map<String, Value>>, ApiError> {
    let metadata = match given(body, "metadata") {
        None => return Ok(None),
        Some(Value::Object(m)) => m,
        Some(other) => return Err(wrong_type("metadata", "an object", other)),
    };
    if metadata.len() > 16 {
        return Err(invalid(
            "metadata",
            "Invalid 'metadata': at most 16 keys are allowed.",
        ));
    }
    for (key, value) in metadata {
        let param = format!("metadata.{key}");
        match value {
            Value::String(s) if s.chars().count() <= 512 && key.chars().count() <= 64 => {}
            Value::String(_) => {
                return Err(invalid(
                    &param,
                    "Keys are at most 64 characters and values at most 512.",
                ));
            }
            other => return Err(wrong_type(&param, "a string", other)),
        }
    }
    Ok(Some(metadata.clone()))
}

fn sim_fail(metadata: Option<&Map<String, Value>>) -> Result<Option<String>, ApiError> {
    let Some(point) = metadata
        .and_then(|m| m.get("sim_fail"))
        .and_then(Value::as_str)
    else {
        return Ok(None);
    };
    if FAIL_POINTS.contains(&point) {
        Ok(Some(point.to_string()))
    } else {
        Err(invalid(
            "metadata.sim_fail",
            format!("'{point}' is not one of {}.", FAIL_POINTS.join(", ")),
        ))
    }
}

/// The method and its hyperparameters; those inside `method` win over the
/// older top-level `hyperparameters`, field by field.
fn method(body: &Map<String, Value>) -> Result<(Shape, Hyperparameters), ApiError> {
    let mut settings = Hyperparameters::default();
    if let Some(top) = given(body, "hyperparameters") {
        read_hyperparameters(top, "hyperparameters", false, &mut settings)?;
    }
    let Some(method) = given(body, "method") else {
        return Ok((Shape::Supervised, settings));
    };
    let Value::Object(method) = method else {
        return Err(wrong_type("method", "an object", method));
    };
    let shape = match given(method, "type").and_then(Value::as_str) {
        Some("supervised") => Shape::Supervised,
        Some("dpo") => Shape::Dpo,
        Some(other) => {
            return Err(invalid(
                "method.type",
                format!("Invalid 'method.type': '{other}' is not one of supervised, dpo."),
            ));
        }
        None => {
            return Err(
                ApiError::invalid("Missing required parameter: 'method.type'.")
                    .param("method.type")
                    .code("missing_required_parameter"),
            );
        }
    };
    let name = shape.name();
    if let Some(inner) = given(method, name) {
        let Value::Object(inner) = inner else {
            return Err(wrong_type(&format!("method.{name}"), "an object", inner));
        };
        if let Some(h) = given(inner, "hyperparameters") {
            let param = format!("method.{name}.hyperparameters");
            read_hyperparameters(h, &param, shape == Shape::Dpo, &mut settings)?;
        }
    }
    Ok((shape, settings))
}

fn read_hyperparameters(
    value: &Value,
    param: &str,
    dpo: bool,
    settings: &mut Hyperparameters,
) -> Result<(), ApiError> {
    let Value::Object(fields) = value else {
        return Err(wrong_type(param, "an object", value));
    };
    for (key, value) in fields.iter().filter(|(_, v)| !v.is_null()) {
        let param = format!("{param}.{key}");
        match key.as_str() {
            "n_epochs" => settings.n_epochs = integer(value, &param, 1, 50)?,
            "batch_size" => settings.batch_size = integer(value, &param, 1, 256)?,
            "learning_rate_multiplier" => {
                settings.learning_rate_multiplier = positive(value, &param, 10.0)?;
            }
            "beta" if dpo => settings.beta = positive(value, &param, 2.0)?,
            _ => {
                return Err(ApiError::invalid(format!("Unknown parameter: '{param}'."))
                    .param(param)
                    .code("unknown_parameter"));
            }
        }
    }
    Ok(())
}

fn integer(value: &Value, param: &str, min: u64, max: u64) -> Result<Setting<u32>, ApiError> {
    if value == "auto" {
        return Ok(Setting::Auto);
    }
    value
        .as_u64()
        .filter(|n| (min..=max).contains(n))
        .and_then(|n| u32::try_from(n).ok())
        .map(Setting::Set)
        .ok_or_else(|| {
            invalid(
                param,
                format!("Invalid '{param}': expected \"auto\" or an integer from {min} to {max}."),
            )
        })
}

fn positive(value: &Value, param: &str, max: f64) -> Result<Setting<f64>, ApiError> {
    if value == "auto" {
        return Ok(Setting::Auto);
    }
    value
        .as_f64()
        .filter(|n| *n > 0.0 && *n <= max)
        .map(Setting::Set)
        .ok_or_else(|| {
            invalid(
                param,
                format!(
                    "Invalid '{param}': expected \"auto\" or a number above 0 and at most {max}."
                ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(body: Value) -> Option<String> {
        parse(body.to_string().as_bytes()).unwrap_err().param
    }

    fn base() -> Value {
        json!({"model": "gpt-4o-mini", "training_file": "file-1"})
    }

    fn with(field: &str, value: Value) -> Value {
        let mut body = base();
        body[field] = value;
        body
    }

    #[test]
    fn a_minimal_request_is_all_auto() {
        let request = parse(base().to_string().as_bytes()).unwrap();
        assert_eq!(request.method, Shape::Supervised);
        assert_eq!(request.hyperparameters, Hyperparameters::default());
        assert_eq!(
            (request.suffix, request.seed, request.sim_fail),
            (None, None, None)
        );
    }

    #[test]
    fn every_field_is_read() {
        let body = json!({"model": "gpt-4o", "training_file": "file-1", "validation_file": "file-2",
            "suffix": "soc-v2", "seed": 42, "metadata": {"team": "soc", "sim_fail": "queued"},
            "hyperparameters": {"n_epochs": 2, "batch_size": "auto"},
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 4, "beta": 0.1, "learning_rate_multiplier": 0.5}}}});
        let request = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(request.method, Shape::Dpo);
        assert_eq!(
            request.hyperparameters,
            Hyperparameters {
                n_epochs: Setting::Set(4),
                batch_size: Setting::Auto,
                learning_rate_multiplier: Setting::Set(0.5),
                beta: Setting::Set(0.1),
            }
        );
        assert_eq!(request.validation_file.as_deref(), Some("file-2"));
        assert_eq!(request.suffix.as_deref(), Some("soc-v2"));
        assert_eq!(request.seed, Some(42));
        assert_eq!(request.sim_fail.as_deref(), Some("queued"));
    }

    #[test]
    fn bad_fields_are_named() {
        let long = "x".repeat(65);
        for (body, param) in [
            (json!({"training_file": "f"}), "model"),
            (with("model", json!("gpt-9")), "model"),
            (with("training_file", json!(null)), "training_file"),
            (with("training_file", json!(3)), "training_file"),
            (with("validation_file", json!([])), "validation_file"),
            (with("suffix", json!("")), "suffix"),
            (with("suffix", json!(long)), "suffix"),
            (with("suffix", json!("a:b")), "suffix"),
            (with("seed", json!(-1)), "seed"),
            (with("seed", json!("1")), "seed"),
            (with("metadata", json!([])), "metadata"),
            (with("metadata", json!({"k": 1})), "metadata.k"),
            (
                with("metadata", json!({"sim_fail": "succeeded"})),
                "metadata.sim_fail",
            ),
            (
                with("hyperparameters", json!({"n_epochs": 0})),
                "hyperparameters.n_epochs",
            ),
            (
                with("hyperparameters", json!({"n_epochs": "many"})),
                "hyperparameters.n_epochs",
            ),
            (
                with("hyperparameters", json!({"batch_size": 1.5})),
                "hyperparameters.batch_size",
            ),
            (
                with("hyperparameters", json!({"learning_rate_multiplier": 0})),
                "hyperparameters.learning_rate_multiplier",
            ),
            (
                with("hyperparameters", json!({"beta": 0.1})),
                "hyperparameters.beta",
            ),
            (with("method", json!({})), "method.type"),
            (
                with("method", json!({"type": "reinforcement"})),
                "method.type",
            ),
            (
                with(
                    "method",
                    json!({"type": "supervised", "supervised": {"hyperparameters": {"beta": 1}}}),
                ),
                "method.supervised.hyperparameters.beta",
            ),
            (
                with(
                    "method",
                    json!({"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}}),
                ),
                "method.dpo.hyperparameters.beta",
            ),
            (with("epochs", json!(3)), "epochs"),
        ] {
            assert_eq!(param_of(body.clone()).as_deref(), Some(param), "{body}");
        }
        assert_eq!(parse(b"[]").unwrap_err().param, None);
        assert_eq!(parse(b"{").unwrap_err().status, 400);
    }
}
