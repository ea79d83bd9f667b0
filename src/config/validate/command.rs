//! The checks of a provider's `kind`: the keys only a `command` trainer
//! takes, the `lora` servers it names in `serve_on`, and no chat sent to a
//! provider that serves none.

use crate::config::{Config, ConfigError, ProviderConfig, ProviderKind};

/// Each kind takes its own keys and refuses the other's.
pub(super) fn check_kind(c: &Config, i: usize, p: &ProviderConfig) -> Result<(), ConfigError> {
    let key = |field: &str| format!("providers[{i}].{field}");
    match p.kind {
        ProviderKind::Openai => {
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
