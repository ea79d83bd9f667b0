//! TOML text plus environment overrides into a typed [`Config`], with errors
//! that name the key (and the variable that set it) and the problem.

use super::Config;
use toml::{Table, Value};

/// `FLYWHEEL__SERVER__LISTEN=0.0.0.0:9000` overrides `server.listen`.
pub const ENV_PREFIX: &str = "FLYWHEEL__";

/// The seed's variable names, honoured as aliases of config keys. A
/// `FLYWHEEL__…` variable for the same key wins.
pub const SEED_ENV_ALIASES: &[(&str, &str)] = &[
    ("OPENAI_FINE_TUNING_ENABLED", "fine_tuning.enabled"),
    ("FINE_TUNING_MIN_EXAMPLES", "fine_tuning.min_examples"),
    ("FINE_TUNING_MAX_EXAMPLES", "fine_tuning.max_examples"),
    (
        "FINE_TUNING_VALIDATION_SPLIT",
        "fine_tuning.validation_split",
    ),
    ("PERFORMANCE_EVALUATION_ENABLED", "evaluation.enabled"),
    ("PERFORMANCE_EVALUATION_INTERVAL", "evaluation.interval_s"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: not valid TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error("config key `{key}`{}: {problem}", set_by(.env_var))]
    Invalid {
        key: String,
        env_var: Option<String>,
        problem: String,
    },
}

fn set_by(env_var: &Option<String>) -> String {
    env_var
        .as_ref()
        .map(|v| format!(" (set by {v})"))
        .unwrap_or_default()
}

impl ConfigError {
    pub(super) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            env_var: None,
            problem: problem.into(),
        }
    }
}

/// One override: a dotted key path and the variable it came from.
struct Override {
    path: Vec<String>,
    var: String,
    value: Value,
}

pub(super) fn parse_with_env(
    text: &str,
    origin: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut table: Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
    let overrides = collect_overrides(env);
    for o in &overrides {
        apply(&mut table, o)?;
    }
    serde_path_to_error::deserialize(Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let env_var = overrides
            .iter()
            .find(|o| key.starts_with(&o.path.join(".")))
            .map(|o| o.var.clone());
        ConfigError::Invalid {
            key,
            env_var,
            problem: e.into_inner().to_string(),
        }
    })
}

/// Seed aliases first, so that a `FLYWHEEL__` variable for the same key wins.
fn collect_overrides(env: impl IntoIterator<Item = (String, String)>) -> Vec<Override> {
    let mut aliases = Vec::new();
    let mut prefixed = Vec::new();
    for (var, raw) in env {
        if let Some(rest) = var.strip_prefix(ENV_PREFIX) {
            let path = rest.split("__").map(str::to_ascii_lowercase).collect();
            prefixed.push(Override {
                path,
                value: env_value(&raw),
                var,
            });
        } else if let Some((_, key)) = SEED_ENV_ALIASES.iter().find(|(name, _)| *name == var) {
            aliases.push(Override {
                path: key.split('.').map(String::from).collect(),
                value: env_value(&raw),
                var,
            });
        }
    }
    prefixed.sort_by(|a, b| a.var.cmp(&b.var));
    aliases.extend(prefixed);
    aliases
}

/// A variable's text read as a TOML value when it is one (`600`, `true`,
/// `["a", "b"]`), else as a string (`127.0.0.1:8080`).
fn env_value(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

/// Sets the override's key, creating tables on the way. A list is entered
/// through the next segment: an index (`PROVIDERS__0__BASE_URL`) or an
/// element's `name` (`PROVIDERS__OPENAI__BASE_URL`).
fn apply(table: &mut Table, o: &Override) -> Result<(), ConfigError> {
    let error = |problem: &str| ConfigError::Invalid {
        key: o.path.join("."),
        env_var: Some(o.var.clone()),
        problem: problem.to_string(),
    };
    let mut segments = o.path.iter().peekable();
    let mut current = table;
    while let Some(segment) = segments.next() {
        if segments.peek().is_none() {
            current.insert(segment.clone(), o.value.clone());
            return Ok(());
        }
        let next = current
            .entry(segment.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        current = match next {
            Value::Table(t) => t,
            Value::Array(items) => {
                let selector = segments.next().ok_or_else(|| error("names a whole list"))?;
                let element = select(items, selector).ok_or_else(|| {
                    error("names no element of that list (use its index or name)")
                })?;
                if segments.peek().is_none() {
                    return Err(error("names a whole list element"));
                }
                element
            }
            _ => return Err(error("goes inside a value that is not a table")),
        };
    }
    Err(error("names no key"))
}

fn select<'a>(items: &'a mut [Value], selector: &str) -> Option<&'a mut Table> {
    let index = match selector.parse::<usize>() {
        Ok(i) => i,
        Err(_) => items.iter().position(|item| {
            item.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.eq_ignore_ascii_case(selector))
        })?,
    };
    items.get_mut(index).and_then(Value::as_table_mut)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[providers]]
name = "sim"
base_url = "http://127.0.0.1:9"

[[models]]
name = "triage"
model_type = "threat_detection"
  [[models.versions]]
  name = "base"
  provider = "sim"
  model = "gpt-4o-mini"
"#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_minimal_file_gets_every_default() {
        let c = parse_with_env(MINIMAL, "t", env(&[])).unwrap();
        assert_eq!(c.server.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(c.limits.requests_per_minute, 600);
        assert_eq!(c.taxonomy.severities.len(), 5);
    }

    #[test]
    fn prefixed_variables_override_nested_keys_and_list_elements() {
        let c = parse_with_env(
            MINIMAL,
            "t",
            env(&[
                ("FLYWHEEL__SERVER__LISTEN", "0.0.0.0:9000"),
                ("FLYWHEEL__LIMITS__BURST", "7"),
                ("FLYWHEEL__PROVIDERS__SIM__TIMEOUT_S", "5"),
                ("FLYWHEEL__PROVIDERS__0__MAX_RETRIES", "0"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 9000);
        assert_eq!(c.limits.burst, 7);
        assert_eq!(c.providers[0].timeout_s, 5);
        assert_eq!(c.providers[0].max_retries, 0);
    }

    #[test]
    fn seed_aliases_apply_and_prefixed_variables_win() {
        let c = parse_with_env(
            MINIMAL,
            "t",
            env(&[
                ("FINE_TUNING_MIN_EXAMPLES", "10"),
                ("PERFORMANCE_EVALUATION_INTERVAL", "60"),
                ("OPENAI_FINE_TUNING_ENABLED", "false"),
                ("FLYWHEEL__FINE_TUNING__MIN_EXAMPLES", "20"),
            ]),
        )
        .unwrap();
        assert_eq!(c.fine_tuning.min_examples, 20);
        assert_eq!(c.evaluation.interval_s, 60);
        assert!(!c.fine_tuning.enabled);
    }

    #[test]
    fn errors_name_the_key_and_the_variable() {
        let e = parse_with_env(MINIMAL, "t", env(&[("FLYWHEEL__SERVER__LISTN", "x")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server") && e.contains("FLYWHEEL__SERVER__LISTN"),
            "{e}"
        );
        assert!(e.contains("unknown field"), "{e}");

        let e = parse_with_env(MINIMAL, "t", env(&[("FLYWHEEL__LIMITS__BURST", "many")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("limits.burst") && e.contains("FLYWHEEL__LIMITS__BURST"),
            "{e}"
        );

        let e = parse_with_env(&format!("{MINIMAL}\n[server]\nlisten = 5\n"), "t", env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.listen"), "{e}");
    }

    #[test]
    fn unknown_list_elements_are_named() {
        let e = parse_with_env(
            MINIMAL,
            "t",
            env(&[("FLYWHEEL__PROVIDERS__NOPE__TIMEOUT_S", "1")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("providers.nope.timeout_s"), "{e}");
    }
}
