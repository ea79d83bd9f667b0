//! Start-up checks of what types alone cannot say: references between
//! sections, ranges, uniqueness. Each error names the key.

use super::{Config, ConfigError, StoreKind};
use std::collections::HashSet;

mod command;

pub(super) fn validate(c: &Config) -> Result<(), ConfigError> {
    check_server(c)?;
    if let Some(entra) = &c.auth.entra {
        super::entra_auth::check(entra)?;
    }
    check_limits(c)?;
    check_providers(c)?;
    check_models(c)?;
    check_capture(c)?;
    check_taxonomy(c)?;
    check_fine_tuning(c)?;
    check_evaluation(c)?;
    check_store(c)
}

fn check_store(c: &Config) -> Result<(), ConfigError> {
    let s = &c.store;
    if s.url_env.trim().is_empty() {
        return Err(ConfigError::invalid(
            "store.url_env",
            "must name a variable",
        ));
    }
    if !(1..=256).contains(&s.pool_size) {
        return Err(ConfigError::invalid(
            "store.pool_size",
            "must be between 1 and 256",
        ));
    }
    if !(100..=600_000).contains(&s.statement_timeout_ms) {
        return Err(ConfigError::invalid(
            "store.statement_timeout_ms",
            "must be between 100 and 600000 milliseconds",
        ));
    }
    if !(3..=3600).contains(&s.lease_ttl_s) {
        return Err(ConfigError::invalid(
            "store.lease_ttl_s",
            "must be between 3 and 3600 seconds",
        ));
    }
    if s.ca_file.is_some() && s.kind != StoreKind::Postgres {
        return Err(ConfigError::invalid(
            "store.ca_file",
            "applies only with kind = \"postgres\"",
        ));
    }
    Ok(())
}

fn check_server(c: &Config) -> Result<(), ConfigError> {
    if c.server.max_body_bytes < 1024 {
        return Err(ConfigError::invalid(
            "server.max_body_bytes",
            "must be at least 1024 bytes",
        ));
    }
    if let Some(name) = &c.server.default_provider
        && !c.providers.iter().any(|p| &p.name == name)
    {
        return Err(ConfigError::invalid(
            "server.default_provider",
            format!("names provider `{name}`, which no [[providers]] entry defines"),
        ));
    }
    if let Some(name) = &c.server.default_provider {
        command::check_serves(c, "server.default_provider", name)?;
    }
    if c.server.data_dir.as_os_str().is_empty() {
        return Err(ConfigError::invalid("server.data_dir", "must not be empty"));
    }
    for (key, value) in [
        (
            "server.header_read_timeout_s",
            c.server.header_read_timeout_s,
        ),
        ("server.idle_timeout_s", c.server.idle_timeout_s),
        ("server.body_read_timeout_s", c.server.body_read_timeout_s),
    ] {
        if value == 0 {
            return Err(ConfigError::invalid(key, "must be at least 1 second"));
        }
    }
    if c.server.max_connections == 0 {
        return Err(ConfigError::invalid(
            "server.max_connections",
            "must be at least 1",
        ));
    }
    if c.server.max_header_bytes < 8192 {
        return Err(ConfigError::invalid(
            "server.max_header_bytes",
            "must be at least 8192 bytes",
        ));
    }
    Ok(())
}

fn check_limits(c: &Config) -> Result<(), ConfigError> {
    if c.limits.replicas == 0 {
        return Err(ConfigError::invalid(
            "limits.replicas",
            "must be at least 1",
        ));
    }
    if c.limits.requests_per_minute > 0 && c.limits.burst == 0 {
        return Err(ConfigError::invalid(
            "limits.burst",
            "must be at least 1 while limits.requests_per_minute is on",
        ));
    }
    Ok(())
}

#[expect(
    clippy::disallowed_types,
    reason = "a base URL is read as the provider's client will read it"
)]
fn check_providers(c: &Config) -> Result<(), ConfigError> {
    if c.providers.is_empty() {
        return Err(ConfigError::invalid(
            "providers",
            "at least one [[providers]] entry is required",
        ));
    }
    let mut names = HashSet::new();
    for (i, p) in c.providers.iter().enumerate() {
        let key = |field: &str| format!("providers[{i}].{field}");
        if p.name.trim().is_empty() {
            return Err(ConfigError::invalid(key("name"), "must not be empty"));
        }
        if !names.insert(p.name.as_str()) {
            return Err(ConfigError::invalid(
                key("name"),
                format!("`{}` is defined twice", p.name),
            ));
        }
        command::check_kind(c, i, p)?;
        super::azure::check(i, p)?;
        if !p.serves() {
            continue;
        }
        match reqwest::Url::parse(&p.base_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(_) => {
                return Err(ConfigError::invalid(
                    key("base_url"),
                    "must be an http(s) URL",
                ));
            }
            Err(e) => {
                return Err(ConfigError::invalid(
                    key("base_url"),
                    format!("`{}` is not a URL: {e}", p.base_url),
                ));
            }
        }
        for (field, value) in [
            ("timeout_s", p.timeout_s),
            ("first_byte_timeout_s", p.first_byte_timeout_s),
            ("connect_timeout_s", p.connect_timeout_s),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(
                    key(field),
                    "must be at least 1 second",
                ));
            }
        }
        if p.first_byte_timeout_s > p.timeout_s {
            return Err(ConfigError::invalid(
                key("first_byte_timeout_s"),
                "must not exceed timeout_s",
            ));
        }
        if p.max_answer_bytes < 65_536 {
            return Err(ConfigError::invalid(
                key("max_answer_bytes"),
                "must be at least 65536: a chat answer can be that large",
            ));
        }
        if p.api_key_env
            .as_deref()
            .is_some_and(|v| v.trim().is_empty())
        {
            return Err(ConfigError::invalid(
                key("api_key_env"),
                "names no variable (leave the key out for providers without a key)",
            ));
        }
    }
    Ok(())
}

fn check_models(c: &Config) -> Result<(), ConfigError> {
    if c.models.is_empty() {
        return Err(ConfigError::invalid(
            "models",
            "at least one [[models]] entry is required",
        ));
    }
    let mut aliases = HashSet::new();
    for (i, m) in c.models.iter().enumerate() {
        let key = |field: &str| format!("models[{i}].{field}");
        if m.name.trim().is_empty() {
            return Err(ConfigError::invalid(key("name"), "must not be empty"));
        }
        if !aliases.insert(m.name.as_str()) {
            return Err(ConfigError::invalid(
                key("name"),
                format!("alias `{}` is defined twice", m.name),
            ));
        }
        if m.versions.is_empty() {
            return Err(ConfigError::invalid(
                key("versions"),
                format!(
                    "alias `{}` needs at least one [[models.versions]] entry",
                    m.name
                ),
            ));
        }
        let mut versions = HashSet::new();
        for (j, v) in m.versions.iter().enumerate() {
            let vkey = |field: &str| format!("models[{i}].versions[{j}].{field}");
            if v.name.trim().is_empty() || v.model.trim().is_empty() {
                return Err(ConfigError::invalid(
                    vkey("name"),
                    "name and model must not be empty",
                ));
            }
            if !versions.insert(v.name.as_str()) {
                return Err(ConfigError::invalid(
                    vkey("name"),
                    format!("version `{}` is defined twice", v.name),
                ));
            }
            if !c.providers.iter().any(|p| p.name == v.provider) {
                return Err(ConfigError::invalid(
                    vkey("provider"),
                    format!(
                        "names provider `{}`, which no [[providers]] entry defines",
                        v.provider
                    ),
                ));
            }
            command::check_serves(c, &vkey("provider"), &v.provider)?;
        }
        if m.production_version().is_none() {
            return Err(ConfigError::invalid(
                key("production"),
                "names no version of this alias",
            ));
        }
        let g = &m.guardrails;
        if !(g.alpha > 0.0 && g.alpha <= 0.5) {
            return Err(ConfigError::invalid(
                key("guardrails.alpha"),
                "must be above 0 and at most 0.5",
            ));
        }
        if g.check_interval_s == 0 {
            return Err(ConfigError::invalid(
                key("guardrails.check_interval_s"),
                "must be at least 1",
            ));
        }
    }
    Ok(())
}

fn check_capture(c: &Config) -> Result<(), ConfigError> {
    crate::capture::Redactor::new(&c.capture.redact).map_err(|(i, e)| {
        ConfigError::invalid(
            format!("capture.redact[{i}]"),
            format!("is neither \"credentials\" nor a valid regex: {e}"),
        )
    })?;
    let background = &c.capture.background_tasks;
    crate::capture::BackgroundTasks::new(background.enabled, &background.patterns).map_err(
        |(i, e)| {
            ConfigError::invalid(
                format!("capture.background_tasks.patterns[{i}]"),
                format!("is not a valid regex: {e}"),
            )
        },
    )?;
    if c.capture.retention_days == Some(0) {
        return Err(ConfigError::invalid(
            "capture.retention_days",
            "must be at least 1 (leave it out to keep everything)",
        ));
    }
    if c.capture.queue_capacity == 0 {
        return Err(ConfigError::invalid(
            "capture.queue_capacity",
            "must be at least 1",
        ));
    }
    // Not tied to server.max_body_bytes: that also bounds uploads passed
    // through to the provider (training files), which capture never holds.
    if c.capture.queue_max_bytes < 65_536 {
        return Err(ConfigError::invalid(
            "capture.queue_max_bytes",
            "must be at least 65536: a chat exchange can be that large",
        ));
    }
    if c.capture.flush_every_ms == 0 {
        return Err(ConfigError::invalid(
            "capture.flush_every_ms",
            "must be at least 1",
        ));
    }
    Ok(())
}

fn check_taxonomy(c: &Config) -> Result<(), ConfigError> {
    for (key, values) in [
        ("taxonomy.threat_types", &c.taxonomy.threat_types),
        ("taxonomy.severities", &c.taxonomy.severities),
    ] {
        if values.is_empty() {
            return Err(ConfigError::invalid(key, "must list at least one value"));
        }
        let unique: HashSet<_> = values.iter().collect();
        if unique.len() != values.len() {
            return Err(ConfigError::invalid(key, "lists a value twice"));
        }
    }
    Ok(())
}

fn check_fine_tuning(c: &Config) -> Result<(), ConfigError> {
    let f = &c.fine_tuning;
    if f.min_examples == 0 {
        return Err(ConfigError::invalid(
            "fine_tuning.min_examples",
            "must be at least 1",
        ));
    }
    if f.max_examples < f.min_examples {
        return Err(ConfigError::invalid(
            "fine_tuning.max_examples",
            format!(
                "{} is below min_examples ({})",
                f.max_examples, f.min_examples
            ),
        ));
    }
    if !(0.0..1.0).contains(&f.validation_split) {
        return Err(ConfigError::invalid(
            "fine_tuning.validation_split",
            "must be at least 0 and below 1",
        ));
    }
    if f.poll_interval_s == 0 {
        return Err(ConfigError::invalid(
            "fine_tuning.poll_interval_s",
            "must be at least 1",
        ));
    }
    if !(0.0..100.0).contains(&f.canary_weight) {
        return Err(ConfigError::invalid(
            "fine_tuning.canary_weight",
            "must be a percentage of at least 0 and below 100",
        ));
    }
    if f.continuous.min_new_approved == 0 {
        return Err(ConfigError::invalid(
            "fine_tuning.continuous.min_new_approved",
            "must be at least 1",
        ));
    }
    if f.continuous.check_interval_s == 0 {
        return Err(ConfigError::invalid(
            "fine_tuning.continuous.check_interval_s",
            "must be at least 1",
        ));
    }
    check_examples(f)
}

/// What curation needs to build examples at all.
fn check_examples(f: &crate::config::FineTuningConfig) -> Result<(), ConfigError> {
    crate::curation::AnswerTemplate::parse(&f.answer_template)
        .map_err(|e| ConfigError::invalid("fine_tuning.answer_template", e.to_string()))?;
    if f.min_message_chars == 0 {
        return Err(ConfigError::invalid(
            "fine_tuning.min_message_chars",
            "must be at least 1",
        ));
    }
    if f.max_message_chars < f.min_message_chars {
        return Err(ConfigError::invalid(
            "fine_tuning.max_message_chars",
            format!(
                "{} is below min_message_chars ({})",
                f.max_message_chars, f.min_message_chars
            ),
        ));
    }
    let prompt = f.system_prompt.chars().count();
    if !(f.min_message_chars..=f.max_message_chars).contains(&prompt) {
        return Err(ConfigError::invalid(
            "fine_tuning.system_prompt",
            format!(
                "has {prompt} characters; every message of an example needs {} to {}",
                f.min_message_chars, f.max_message_chars
            ),
        ));
    }
    if f.default_token_limit == 0 {
        return Err(ConfigError::invalid(
            "fine_tuning.default_token_limit",
            "must be at least 1",
        ));
    }
    if let Some((model, _)) = f.token_limits.iter().find(|(_, tokens)| **tokens == 0) {
        return Err(ConfigError::invalid(
            format!("fine_tuning.token_limits.{model}"),
            "must be at least 1",
        ));
    }
    Ok(())
}

fn check_evaluation(c: &Config) -> Result<(), ConfigError> {
    if c.evaluation.interval_s == 0 {
        return Err(ConfigError::invalid(
            "evaluation.interval_s",
            "must be at least 1",
        ));
    }
    let t = &c.evaluation.targets;
    for (key, value) in [
        ("evaluation.targets.accuracy", t.accuracy),
        (
            "evaluation.targets.precision_high_severity",
            t.precision_high_severity,
        ),
        ("evaluation.targets.recall_critical", t.recall_critical),
    ] {
        if !(0.0..=1.0).contains(&value) {
            return Err(ConfigError::invalid(key, "must be between 0 and 1"));
        }
    }
    check_evaluation_runs(c)?;
    crate::evaluation::extract::Extractor::new(&c.evaluation.extractor, &c.taxonomy)
        .map(drop)
        .map_err(|e| ConfigError::invalid(e.key, e.problem))
}

#[expect(
    clippy::disallowed_types,
    reason = "the webhook URL is read as its client will read it"
)]
fn check_evaluation_runs(c: &Config) -> Result<(), ConfigError> {
    let e = &c.evaluation;
    if e.concurrency == 0 {
        return Err(ConfigError::invalid(
            "evaluation.concurrency",
            "must be at least 1",
        ));
    }
    if !(0.0..=1.0).contains(&e.alert_drop) {
        return Err(ConfigError::invalid(
            "evaluation.alert_drop",
            "must be between 0 and 1",
        ));
    }
    if e.webhook_attempts == 0 {
        return Err(ConfigError::invalid(
            "evaluation.webhook_attempts",
            "must be at least 1",
        ));
    }
    if let Some(url) = &e.webhook_url {
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(_) => {
                return Err(ConfigError::invalid(
                    "evaluation.webhook_url",
                    "must be an http:// or https:// URL",
                ));
            }
            Err(err) => {
                return Err(ConfigError::invalid(
                    "evaluation.webhook_url",
                    format!("`{url}` is not a URL: {err}"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

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

    fn error(extra: &str) -> String {
        Config::from_toml_str(&format!("{MINIMAL}\n[fine_tuning]\n{extra}\n"), "t", [])
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_ca_file_applies_only_to_the_postgres_store() {
        let sled = Config::from_toml_str(
            &format!("{MINIMAL}\n[store]\nca_file = \"ca.pem\"\n"),
            "t",
            [],
        );
        let e = sled.unwrap_err().to_string();
        assert!(e.contains("store.ca_file") && e.contains("postgres"), "{e}");
        let postgres = format!("{MINIMAL}\n[store]\nkind = \"postgres\"\nca_file = \"ca.pem\"\n");
        assert!(Config::from_toml_str(&postgres, "t", []).is_ok());
    }

    #[test]
    fn the_capture_queues_byte_budget_is_checked() {
        let with = |extra: &str| Config::from_toml_str(&format!("{MINIMAL}\n{extra}\n"), "t", []);
        let e = with("[capture]\nqueue_max_bytes = 1000")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("capture.queue_max_bytes") && e.contains("65536"),
            "{e}"
        );
        // Uploads larger than the budget still pass through.
        let large_uploads = "[server]\nmax_body_bytes = 536870912";
        assert!(with(large_uploads).is_ok());
        assert_eq!(with("").unwrap().capture.queue_max_bytes, 256 * 1024 * 1024);
    }

    #[test]
    fn a_providers_answer_limit_is_checked() {
        let config = MINIMAL.replace(
            "base_url = \"http://127.0.0.1:9\"",
            "base_url = \"http://127.0.0.1:9\"\nmax_answer_bytes = 1000",
        );
        let e = Config::from_toml_str(&config, "t", [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_answer_bytes") && e.contains("65536"), "{e}");
        let config = Config::from_toml_str(MINIMAL, "t", []).unwrap();
        assert_eq!(config.providers[0].max_answer_bytes, 64 * 1024 * 1024);
    }

    #[test]
    fn fine_tuning_example_settings_are_checked() {
        let e = error(r#"answer_template = "labeled""#);
        assert!(
            e.contains("fine_tuning.answer_template") && e.contains("preset"),
            "{e}"
        );
        let e = error(r#"answer_template = "{threat_type}: {verdict}""#);
        assert!(
            e.contains("fine_tuning.answer_template") && e.contains("`{verdict}`"),
            "{e}"
        );
        let e = error("min_message_chars = 20\nmax_message_chars = 10");
        assert!(e.contains("fine_tuning.max_message_chars"), "{e}");
        let e = error(r#"system_prompt = "Hi""#);
        assert!(
            e.contains("fine_tuning.system_prompt") && e.contains("2 characters"),
            "{e}"
        );
        let e = error("[fine_tuning.token_limits]\ngpt-4o = 0");
        assert!(e.contains("fine_tuning.token_limits.gpt-4o"), "{e}");
        let e = error("canary_weight = 100");
        assert!(e.contains("fine_tuning.canary_weight"), "{e}");
        let e = error("[fine_tuning.continuous]\nmin_new_approved = 0");
        assert!(e.contains("fine_tuning.continuous.min_new_approved"), "{e}");
        assert!(Config::from_toml_str(MINIMAL, "t", []).is_ok());
    }
}
