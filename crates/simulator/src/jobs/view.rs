//! How a job looks on the wire: the `fine_tuning.job` object, its events
//! and its checkpoint, in OpenAI's shapes.

use super::{Event, Job, ORGANIZATION};
use crate::dataset::Shape;
use crate::training::Trained;
use serde_json::{Value, json};

impl Event {
    pub fn object(&self) -> Value {
        let kind = if self.data.is_some() {
            "metrics"
        } else {
            "message"
        };
        json!({
            "object": "fine_tuning.job.event",
            "id": self.id,
            "created_at": self.created_at,
            "level": self.level,
            "message": self.message,
            "type": kind,
            "data": self.data.clone().unwrap_or_else(|| json!({})),
        })
    }
}

impl Job {
    /// The final step's checkpoint, which is the fine-tuned model itself.
    pub(super) fn checkpoint(&self, run: &Trained, name: &str, created_at: u64) -> Vec<Value> {
        let Some(last) = run.metrics.last() else {
            return Vec::new();
        };
        let mut metrics = json!({
            "step": last.step,
            "train_loss": last.train_loss,
            "train_mean_token_accuracy": last.train_accuracy,
        });
        if let Some((loss, accuracy)) = last.valid {
            metrics["full_valid_loss"] = json!(loss);
            metrics["full_valid_mean_token_accuracy"] = json!(accuracy);
        }
        vec![json!({
            "object": "fine_tuning.job.checkpoint",
            "id": format!("ftckpt-{}", ulid::Ulid::new()),
            "created_at": created_at,
            "fine_tuned_model_checkpoint": name,
            "step_number": last.step,
            "metrics": metrics,
            "fine_tuning_job_id": self.id,
        })]
    }

    fn hyperparameters(&self) -> Value {
        let h = self.request.hyperparameters;
        let mut out = match self.resolved {
            Some(r) => json!({
                "n_epochs": r.settings.n_epochs,
                "batch_size": r.settings.batch_size,
                "learning_rate_multiplier": r.settings.learning_rate_multiplier,
            }),
            None => json!({
                "n_epochs": h.n_epochs.json(),
                "batch_size": h.batch_size.json(),
                "learning_rate_multiplier": h.learning_rate_multiplier.json(),
            }),
        };
        if self.request.method == Shape::Dpo {
            out["beta"] = self
                .resolved
                .map_or_else(|| h.beta.json(), |r| json!(r.beta));
        }
        out
    }

    /// The `fine_tuning.job` object.
    pub fn object(&self) -> Value {
        let hyperparameters = self.hyperparameters();
        let method = self.request.method.name();
        let estimated_finish = (!self.status.is_final()).then(|| self.at(3.0).1);
        json!({
            "object": "fine_tuning.job",
            "id": self.id,
            "model": self.request.model,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "fine_tuned_model": self.fine_tuned_model,
            "organization_id": ORGANIZATION,
            "result_files": self.result_files,
            "status": self.status.name(),
            "training_file": self.request.training_file,
            "validation_file": self.request.validation_file,
            "hyperparameters": hyperparameters,
            "trained_tokens": self.trained_tokens,
            "error": self.error,
            "seed": self.seed,
            "estimated_finish": estimated_finish,
            "method": {"type": method, method: {"hyperparameters": hyperparameters}},
            "metadata": self.request.metadata,
            "integrations": [],
            "user_provided_suffix": self.request.suffix,
        })
    }
}
