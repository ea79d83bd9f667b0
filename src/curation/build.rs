//! Building a dataset snapshot from candidate conversations: every
//! candidate an example or a rejection with its reason, duplicates
//! dropped, a stratified split, the JSONL files and their content hash,
//! and the report `POST /datasets` answers with.

use super::example::{Candidate, Example, build_example};
use super::format::{DatasetFormat, Line};
use super::split::stratified_split;
use super::template::{AnswerTemplate, TemplateError};
use super::validate::{Limits, check_messages};
use crate::config::{Config, TaxonomyConfig};
use crate::evaluation::extract::{Extractor, ExtractorError};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// OpenAI refuses a training file with fewer examples than this.
const PROVIDER_MIN_TRAIN: usize = 10;

/// Everything a build depends on besides its candidates.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub format: DatasetFormat,
    pub validation_split: f64,
    pub system_prompt: String,
    pub template: AnswerTemplate,
    /// Reads what an answer says, to refuse answers the labels contradict.
    pub extractor: Extractor,
    pub limits: Limits,
    pub min_examples: usize,
    pub max_examples: usize,
    pub taxonomy: TaxonomyConfig,
}

/// A setting the build cannot use. Start-up validation rejects both, so
/// a running server never meets them.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("fine_tuning.answer_template is invalid: {0}")]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Extractor(#[from] ExtractorError),
}

impl BuildOptions {
    /// The options `[fine_tuning]`, `[taxonomy]` and
    /// `[evaluation.extractor]` give for `base_model`; a request's own
    /// `validation_split` wins over the configured one.
    pub fn from_config(
        config: &Config,
        format: DatasetFormat,
        base_model: &str,
        validation_split: Option<f64>,
    ) -> Result<Self, OptionsError> {
        let f = &config.fine_tuning;
        Ok(Self {
            format,
            validation_split: validation_split.unwrap_or(f.validation_split),
            system_prompt: f.system_prompt.clone(),
            template: AnswerTemplate::parse(&f.answer_template)?,
            extractor: Extractor::new(&config.evaluation.extractor, &config.taxonomy)?,
            limits: Limits::from_config(f, base_model),
            min_examples: f.min_examples,
            max_examples: f.max_examples,
            taxonomy: config.taxonomy.clone(),
        })
    }
}

/// A built snapshot: its report and its two files.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetBuild {
    pub report: DatasetReport,
    pub train: DatasetFile,
    pub validation: DatasetFile,
}

/// One JSONL file and the conversations its lines came from, in line order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DatasetFile {
    pub jsonl: String,
    pub conversation_ids: Vec<String>,
}

/// What `POST /datasets` reports of a build (the caller adds id, name and
/// creation time).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetReport {
    pub format: DatasetFormat,
    /// SHA-256 (hex) over the train file, a NUL, and the validation file.
    pub content_hash: String,
    pub ready_for_training: bool,
    pub problems: Vec<String>,
    pub counts: Counts,
    /// Accepted examples per threat type; unlabelled ones are not counted here.
    pub by_threat_type: BTreeMap<String, usize>,
    pub coverage: Coverage,
    /// Rejected examples and dropped duplicates, by conversation id.
    pub rejections: Vec<Rejection>,
}

/// `candidates = accepted + rejected + duplicates`; `accepted = train + validation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub candidates: usize,
    pub accepted: usize,
    pub rejected: usize,
    pub duplicates: usize,
    pub train: usize,
    pub validation: usize,
}

/// Which of the taxonomy's threat types have an accepted example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Coverage {
    pub covered: usize,
    pub total: usize,
    /// In taxonomy order.
    pub missing: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub conversation_id: String,
    pub reason: String,
}

/// An example that passed every check.
struct Accepted {
    example: Example,
    line: Line,
}

/// Builds the snapshot of `candidates`. It always yields files and a
/// report; `ready_for_training` says whether they can be trained on.
pub fn build_dataset(candidates: &[Candidate], options: &BuildOptions) -> DatasetBuild {
    let (accepted, mut rejections) = sort_out(candidates, options);
    let rejected = rejections.len();
    let (accepted, duplicates) = dedup(accepted);
    rejections.extend(duplicates);
    rejections.sort_by(|a, b| a.conversation_id.cmp(&b.conversation_id));
    let keys: Vec<(Option<&str>, &str)> = accepted
        .iter()
        .map(|a| (a.example.threat_type.as_deref(), a.line.hash.as_str()))
        .collect();
    let split = stratified_split(&keys, options.validation_split);
    let train = file(&accepted, &split.train);
    let validation = file(&accepted, &split.validation);
    let counts = Counts {
        candidates: candidates.len(),
        accepted: accepted.len(),
        rejected,
        duplicates: rejections.len() - rejected,
        train: split.train.len(),
        validation: split.validation.len(),
    };
    let problems = problems(&counts, options);
    let report = DatasetReport {
        format: options.format,
        content_hash: content_hash(&train, &validation),
        ready_for_training: problems.is_empty(),
        problems,
        counts,
        by_threat_type: by_threat_type(&accepted),
        coverage: coverage(&accepted, &options.taxonomy),
        rejections,
    };
    DatasetBuild {
        report,
        train,
        validation,
    }
}

/// Each candidate accepted, or rejected with its reason.
fn sort_out(candidates: &[Candidate], options: &BuildOptions) -> (Vec<Accepted>, Vec<Rejection>) {
    let mut accepted = Vec::new();
    let mut rejections = Vec::new();
    for c in candidates {
        match accept(c, options) {
            Ok(a) => accepted.push(a),
            Err(reason) => rejections.push(Rejection {
                conversation_id: c.conversation.id.clone(),
                reason,
            }),
        }
    }
    (accepted, rejections)
}

/// The candidate's example and line, or why it cannot be one.
fn accept(c: &Candidate, options: &BuildOptions) -> Result<Accepted, String> {
    let example = build_example(
        c,
        &options.system_prompt,
        &options.template,
        &options.extractor,
    )?;
    let line = options.format.line(&example)?;
    for (name, chat) in &line.chats {
        check_messages(chat, &options.limits).map_err(|why| match *name {
            "" => why,
            name => format!("{name}: {why}"),
        })?;
    }
    Ok(Accepted { example, line })
}

/// Keeps the copy with the smallest (oldest) conversation id of each
/// normalised text; the others become rejections naming it.
fn dedup(mut accepted: Vec<Accepted>) -> (Vec<Accepted>, Vec<Rejection>) {
    accepted.sort_by(|a, b| a.example.conversation_id.cmp(&b.example.conversation_id));
    let mut kept: HashMap<String, String> = HashMap::new();
    let mut unique = Vec::new();
    let mut duplicates = Vec::new();
    for a in accepted {
        let id = &a.example.conversation_id;
        match kept.get(&a.line.hash) {
            Some(original) => duplicates.push(Rejection {
                conversation_id: id.clone(),
                reason: format!("a near-verbatim duplicate of {original}, which is kept"),
            }),
            None => {
                kept.insert(a.line.hash.clone(), id.clone());
                unique.push(a);
            }
        }
    }
    (unique, duplicates)
}

fn file(accepted: &[Accepted], indices: &[usize]) -> DatasetFile {
    let mut out = DatasetFile::default();
    for a in indices.iter().filter_map(|i| accepted.get(*i)) {
        out.jsonl.push_str(&a.line.json);
        out.jsonl.push('\n');
        out.conversation_ids.push(a.example.conversation_id.clone());
    }
    out
}

fn content_hash(train: &DatasetFile, validation: &DatasetFile) -> String {
    let mut hasher = Sha256::new();
    hasher.update(train.jsonl.as_bytes());
    // JSON escapes NUL, so it cannot occur in either file.
    hasher.update([0]);
    hasher.update(validation.jsonl.as_bytes());
    hex::encode(hasher.finalize())
}

/// What keeps the snapshot from training, each saying how far off it is.
fn problems(counts: &Counts, options: &BuildOptions) -> Vec<String> {
    let mut problems = Vec::new();
    let n = counts.accepted;
    if n < options.min_examples {
        problems.push(format!(
            "{n} examples accepted: {} short of the minimum of {} (fine_tuning.min_examples)",
            options.min_examples - n,
            options.min_examples
        ));
    }
    if n > options.max_examples {
        problems.push(format!(
            "{n} examples accepted: {} over the maximum of {} (fine_tuning.max_examples); narrow the filter",
            n - options.max_examples,
            options.max_examples
        ));
    }
    if counts.train < PROVIDER_MIN_TRAIN {
        problems.push(format!(
            "the training file has {} examples: {} short of the {PROVIDER_MIN_TRAIN} OpenAI requires",
            counts.train,
            PROVIDER_MIN_TRAIN - counts.train
        ));
    }
    problems
}

fn by_threat_type(accepted: &[Accepted]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for t in accepted
        .iter()
        .filter_map(|a| a.example.threat_type.as_ref())
    {
        *counts.entry(t.clone()).or_default() += 1;
    }
    counts
}

fn coverage(accepted: &[Accepted], taxonomy: &TaxonomyConfig) -> Coverage {
    let present = by_threat_type(accepted);
    let missing: Vec<String> = taxonomy
        .threat_types
        .iter()
        .filter(|t| !present.contains_key(*t))
        .cloned()
        .collect();
    Coverage {
        covered: taxonomy.threat_types.len() - missing.len(),
        total: taxonomy.threat_types.len(),
        missing,
    }
}
