//! The admin side: the embedded web UI at `/admin/` and the admin API under
//! `/admin/api/*` (analyst or admin keys; writes that change models, keys,
//! datasets, fine-tuning jobs and evaluations need admin).

mod alerts;
mod conversations;
mod datasets;
mod evaluations;
mod fine_tuning;
mod keys;
mod me;
mod models;
mod providers;
mod sign_in;
mod ui;

pub use alerts::{acknowledge_alert, list_alerts};
pub use conversations::{
    bulk_review, delete_conversation, get_conversation, get_stats, list_conversations,
    patch_conversation,
};
pub use datasets::{get_dataset, list_datasets, post_dataset, train_file, validation_file};
pub use evaluations::{
    create_evaluation, evaluation_examples, get_evaluation, list_evaluations, performance,
};
pub use fine_tuning::{
    cancel as cancel_job, create as create_job, delete_job_deployment, get as get_job,
    list as list_jobs, register_job_deployment, unload as unload_adapter,
};
pub use keys::{create_key, list_audit, list_keys, revoke_key};
pub use me::me;
pub use models::{
    experiment, get_model, history as model_history, list_models, promote, promotion_gate,
    register_version, rollback, set_traffic,
};
pub use providers::list_providers;
pub use sign_in::sign_in;
pub use ui::{ui_asset, ui_index};

use crate::openai::blocking;

/// The OpenAI list envelope the admin API uses for every listing.
fn list_envelope(data: Vec<serde_json::Value>, next_cursor: Option<String>) -> serde_json::Value {
    serde_json::json!({
        "object": "list",
        "data": data,
        "has_more": next_cursor.is_some(),
        "next_cursor": next_cursor,
    })
}
