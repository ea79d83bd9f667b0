//! The trainer's command line: an argv template (no shell) whose
//! placeholders are filled from the job, argument by argument.

use crate::store::FineTuneJobRecord;
use std::path::Path;

/// The placeholders an argument may use; each `{name}` is replaced where it
/// stands, so `--output_dir={output_dir}` works too.
pub const PLACEHOLDERS: &[&str] = &[
    "data_dir",
    "train_file",
    "validation_file",
    "base_model",
    "method",
    "epochs",
    "batch_size",
    "learning_rate_multiplier",
    "seed",
    "hyperparameters_json",
    "output_dir",
    "job_id",
    "adapter_name",
];

/// What the job leaves unset (`auto` at a provider) a trainer gets as these.
pub const DEFAULT_EPOCHS: u32 = 3;
pub const DEFAULT_BATCH_SIZE: u32 = 8;
pub const DEFAULT_LEARNING_RATE_MULTIPLIER: f64 = 1.0;
pub const DEFAULT_SEED: u64 = 42;

/// Refuses a `{word}` that is no placeholder, so a typo is found at
/// start-up rather than passed to the trainer. Braces around anything
/// else (a JSON argument) are left alone.
pub fn check_template(argv: &[String]) -> Result<(), String> {
    for arg in argv {
        for name in names_in(arg) {
            if !PLACEHOLDERS.contains(&name) {
                return Err(format!(
                    "`{{{name}}}` is no placeholder; use {}",
                    PLACEHOLDERS
                        .iter()
                        .map(|p| format!("{{{p}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// The `{word}`s of one argument whose word is lower-case letters and `_`.
fn names_in(arg: &str) -> impl Iterator<Item = &str> {
    arg.split('{').skip(1).filter_map(|rest| {
        let (name, _) = rest.split_once('}')?;
        let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        plain.then_some(name)
    })
}

/// The paths a run uses.
pub struct Paths<'a> {
    /// The job's directory, holding the two data files.
    pub data: &'a Path,
    pub train: &'a Path,
    pub validation: &'a Path,
    pub output: &'a Path,
}

/// The argv for `job`, every placeholder filled.
pub fn expand(
    template: &[String],
    job: &FineTuneJobRecord,
    adapter_name: &str,
    paths: &Paths<'_>,
) -> Vec<String> {
    let h = &job.hyperparameters;
    let epochs = h.n_epochs.unwrap_or(DEFAULT_EPOCHS);
    let batch_size = h.batch_size.unwrap_or(DEFAULT_BATCH_SIZE);
    let lr = h
        .learning_rate_multiplier
        .unwrap_or(DEFAULT_LEARNING_RATE_MULTIPLIER);
    let seed = job.seed.unwrap_or(DEFAULT_SEED);
    let method = if job.method == "dpo" { "dpo" } else { "sft" };
    let hyperparameters = serde_json::json!({
        "n_epochs": epochs,
        "batch_size": batch_size,
        "learning_rate_multiplier": lr,
        "seed": seed,
    })
    .to_string();
    let value = |name: &str| -> String {
        match name {
            "data_dir" => paths.data.display().to_string(),
            "train_file" => paths.train.display().to_string(),
            "validation_file" => paths.validation.display().to_string(),
            "base_model" => job.base_model.clone(),
            "method" => method.to_string(),
            "epochs" => epochs.to_string(),
            "batch_size" => batch_size.to_string(),
            "learning_rate_multiplier" => lr.to_string(),
            "seed" => seed.to_string(),
            "hyperparameters_json" => hyperparameters.clone(),
            "output_dir" => paths.output.display().to_string(),
            "job_id" => job.id.clone(),
            "adapter_name" => adapter_name.to_string(),
            other => format!("{{{other}}}"),
        }
    };
    template
        .iter()
        .map(|arg| {
            PLACEHOLDERS.iter().fold(arg.clone(), |arg, name| {
                let token = format!("{{{name}}}");
                if arg.contains(&token) {
                    arg.replace(&token, &value(name))
                } else {
                    arg
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_placeholders_are_refused_and_json_left_alone() {
        let ok: Vec<String> = ["python3", "t.py", "--out={output_dir}", r#"{"a": 1}"#]
            .map(String::from)
            .to_vec();
        assert!(check_template(&ok).is_ok());
        let typo = vec!["t".to_string(), "{outptu_dir}".to_string()];
        let e = check_template(&typo).unwrap_err();
        assert!(e.starts_with("`{outptu_dir}` is no placeholder"), "{e}");
    }

    #[test]
    fn every_placeholder_is_filled_where_it_stands() {
        let job: FineTuneJobRecord = serde_json::from_value(serde_json::json!({
            "id": "job_1", "alias": "a", "dataset_id": "d", "provider": "p",
            "base_model": "Qwen/Qwen2.5-0.5B", "method": "dpo",
            "hyperparameters": {"n_epochs": 2}, "suffix": null, "seed": null,
            "status": "preparing", "provider_job_id": null, "trained_tokens": null,
            "fine_tuned_model": null, "registered_version": null, "error": null,
            "events": [], "metrics": null, "created_at": "t", "created_by": "k",
            "finished_at": null
        }))
        .unwrap();
        let template: Vec<String> = [
            "trl",
            "{method}",
            "--model_name_or_path",
            "{base_model}",
            "--output_dir={output_dir}",
            "{epochs}/{batch_size}/{learning_rate_multiplier}",
            "{hyperparameters_json}",
            "{adapter_name}",
        ]
        .map(String::from)
        .to_vec();
        let paths = Paths {
            data: Path::new("/d"),
            train: Path::new("/d/train.jsonl"),
            validation: Path::new("/d/validation.jsonl"),
            output: Path::new("/d/adapter"),
        };
        let argv = expand(&template, &job, "ft-x", &paths);
        assert_eq!(argv[1], "dpo");
        assert_eq!(argv[3], "Qwen/Qwen2.5-0.5B");
        assert_eq!(argv[4], "--output_dir=/d/adapter");
        assert_eq!(argv[5], "2/8/1");
        let h: serde_json::Value = serde_json::from_str(&argv[6]).unwrap();
        assert_eq!(h["n_epochs"], 2);
        assert_eq!(argv[7], "ft-x");
    }
}
