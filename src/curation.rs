//! Curation: turning reviewed conversations into fine-tuning datasets.
//!
//! Plain functions over the store's records — the caller reads the
//! candidates and passes them in; only `snapshot` touches the store. A candidate
//! becomes one example (`example`): its last turn's request messages and
//! that turn's answer, an analyst's correction in place of the answer (an
//! answer the labels contradict is refused without one), the system prompt
//! policy applied and the target written through the answer template
//! (`template`: by default the correction or answer verbatim); labels go
//! only into the target, never into the input. Examples are checked against the message and token limits
//! (`validate`), near-verbatim duplicates dropped, the rest split into
//! train and validation stratified by threat type (`split`) and written as
//! OpenAI chat (SFT) or preference (DPO) JSONL (`format`). `build` ties it
//! together into a [`DatasetBuild`], whose report serialises to the
//! `POST /datasets` answer. `signals` gives list filters the same view of
//! each conversation's quality. `snapshot` is the whole job for the API
//! and background triggers: filter → candidates from the store → build →
//! the stored, audited record.

mod build;
mod example;
mod format;
mod signals;
mod snapshot;
mod split;
mod template;
mod validate;

#[cfg(test)]
mod tests;

pub use build::{
    BuildOptions, Counts, Coverage, DatasetBuild, DatasetFile, DatasetReport, OptionsError,
    Rejection, build_dataset,
};
pub use example::{Candidate, Example, LABELS_DISAGREE, Message, build_example};
pub use format::{DatasetFormat, Line, dpo_line, sft_line};
pub use signals::{QualitySignals, normalised_hash, quality_signals, turn_signals};
pub use snapshot::{
    DatasetError, DatasetFilter, DatasetRequest, MAX_CANDIDATES, candidates, create_dataset,
    dataset_view,
};
pub use split::{Split, stratified_split};
pub use template::{AnswerTemplate, Labels, TemplateError, rationale};
pub use validate::{Limits, Tokenizer, check_messages, count_tokens, token_limit};
