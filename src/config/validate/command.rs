//! The checks of a provider's `kind`: the keys only a `command` trainer
//! takes, the `lora` servers it names in `serve_on`, and no chat sent to a
//! provider that serves none.

use crate::config::{Config, ConfigError, ProviderConfig, ProviderKind};

/// Each kind takes its own keys and refuses the other's.
pub(super) fn check_kind(c: &Config, i: usize, p: &ProviderConfig) -> Result<(), ConfigError> {
    let key = |field: &str| format!("providers[{i}].{field}");
    match p.kind {
        ProviderKind::Azure if p.lora => Err(ConfigError::invalid(
            key("lora"),
            "is for a vLLM server (`kind = \"openai\"`); Azure serves fine-tuned models through deployments",
        )),
        ProviderKind::Openai | ProviderKind::Azure => {
            for (field, set) in [
                ("command", !p.command.is_empty()),
                ("adapters_dir", p.adapters_dir.is_some()),
                ("serve_on", !p.serve_on.is_empty()),
            ] {
                if set {
                    return Err(ConfigError::invalid(
                        key(field),
                        "is only for a trainer (`kind = \"command\"`)",
                    ));
                }
            }
            Ok(())
        }
        ProviderKind::Command => check_command(c, p, key),
    }
}

fn check_command(
    c: &Config,
    p: &ProviderConfig,
    key: impl Fn(&str) -> String,
) -> Result<(), ConfigError> {
    if !p.base_url.is_empty() {
        return Err(ConfigError::invalid(
            key("base_url"),
            "a trainer (`kind = \"command\"`) serves nothing; name its servers in `serve_on`",
        ));
    }
    if p.lora {
        return Err(ConfigError::invalid(
            key("lora"),
            "is for the server that takes the adapters, not the trainer",
        ));
    }
    if p.command
        .first()
        .is_none_or(|program| program.trim().is_empty())
    {
        return Err(ConfigError::invalid(
            key("command"),
            "must name the trainer's program and its arguments, e.g. [\"python3\", \"train.py\", \"--output\", \"{output_dir}\"]",
        ));
    }
    if let Err(e) = crate::finetune::check_command_template(&p.command) {
        return Err(ConfigError::invalid(key("command"), e));
    }
    if p.adapters_dir
        .as_ref()
        .is_none_or(|d| d.as_os_str().is_empty())
    {
        return Err(ConfigError::invalid(
            key("adapters_dir"),
            "must name the directory the trainer's adapters are written under",
        ));
    }
    if !p.fine_tuning {
        return Err(ConfigError::invalid(
            key("fine_tuning"),
            "must be true: a trainer does nothing else",
        ));
    }
    if p.max_run_s == 0 {
        return Err(ConfigError::invalid(key("max_run_s"), "must be at least 1"));
    }
    if p.serve_on.is_empty() {
        return Err(ConfigError::invalid(
            key("serve_on"),
            "must name at least one provider with `lora = true` to serve the adapters",
        ));
    }
    for (j, name) in p.serve_on.iter().enumerate() {
        let server = c.providers.iter().find(|s| &s.name == name);
        match server {
            None => {
                return Err(ConfigError::invalid(
                    format!("{}[{j}]", key("serve_on")),
                    format!("names provider `{name}`, which no [[providers]] entry defines"),
                ));
            }
            Some(s) if !s.lora => {
                return Err(ConfigError::invalid(
                    format!("{}[{j}]", key("serve_on")),
                    format!(
                        "provider `{name}` does not take LoRA adapters (its `lora` is not true)"
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// `name`, which `key` names, must be a provider that serves chat.
pub(super) fn check_serves(c: &Config, key: &str, name: &str) -> Result<(), ConfigError> {
    if c.providers
        .iter()
        .any(|p| p.name == name && p.kind == ProviderKind::Command)
    {
        return Err(ConfigError::invalid(
            key,
            format!(
                "names provider `{name}`, a trainer (`kind = \"command\"`) that trains but serves no chat; \
                 name the provider its adapters are served on"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = r#"
[[providers]]
name = "vllm"
base_url = "http://127.0.0.1:8000/v1"
lora = true

[[models]]
name = "triage"
model_type = "threat_detection"
  [[models.versions]]
  name = "base"
  provider = "vllm"
  model = "Qwen/Qwen2.5-7B-Instruct"
"#;

    const TRAINER: &str = r#"
[[providers]]
name = "trainer"
kind = "command"
fine_tuning = true
command = ["trl", "sft", "--output_dir", "{output_dir}"]
adapters_dir = "adapters"
serve_on = ["vllm"]
"#;

    /// The config error (which names the key), or `None` when it is valid.
    fn error_with(extra: &str) -> Option<String> {
        let text = format!("{BASE}{TRAINER}{extra}");
        Config::from_toml_str(&text, "test", Vec::new())
            .err()
            .map(|e| e.to_string())
    }

    fn with(old: &str, new: &str) -> Option<String> {
        let text = format!("{BASE}{}", TRAINER.replace(old, new));
        Config::from_toml_str(&text, "test", Vec::new())
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn a_trainer_is_valid_with_its_keys_and_refused_without_them() {
        assert_eq!(error_with(""), None);
        let named = |e: Option<String>, key: &str| {
            let e = e.unwrap_or_else(|| panic!("no error for {key}"));
            assert!(e.contains(key), "{key}: {e}");
        };
        named(
            with(
                "command = [\"trl\", \"sft\", \"--output_dir\", \"{output_dir}\"]",
                "command = []",
            ),
            "providers[1].command",
        );
        named(with("{output_dir}", "{outdir}"), "providers[1].command");
        named(
            with("adapters_dir = \"adapters\"", ""),
            "providers[1].adapters_dir",
        );
        named(
            with("serve_on = [\"vllm\"]", "serve_on = []"),
            "providers[1].serve_on",
        );
        named(
            with("serve_on = [\"vllm\"]", "serve_on = [\"nope\"]"),
            "providers[1].serve_on[0]",
        );
        named(with("fine_tuning = true", ""), "providers[1].fine_tuning");
        named(
            with(
                "kind = \"command\"",
                "kind = \"command\"\nbase_url = \"http://x\"",
            ),
            "providers[1].base_url",
        );
        let no_lora = format!("{}{TRAINER}", BASE.replace("lora = true", "lora = false"));
        let e = Config::from_toml_str(&no_lora, "test", Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("providers[1].serve_on[0]") && e.contains("`lora`"),
            "{e}"
        );
    }

    #[test]
    fn nothing_serves_chat_from_a_trainer() {
        let version = r#"
  [[models.versions]]
  name = "oops"
  provider = "trainer"
  model = "x"
"#;
        let text = format!("{BASE}{version}{TRAINER}");
        let e = Config::from_toml_str(&text, "test", Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("models[0].versions[1].provider") && e.contains("serves no chat"),
            "{e}"
        );
        let e = error_with("[server]\ndefault_provider = \"trainer\"\n").unwrap();
        assert!(e.contains("server.default_provider"), "{e}");
        let stray = format!(
            "{}{TRAINER}",
            BASE.replace("lora = true", "lora = true\nserve_on = [\"vllm\"]")
        );
        let e = Config::from_toml_str(&stray, "test", Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("providers[0].serve_on"), "{e}");
    }
}
