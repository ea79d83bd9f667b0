//! The records the store keeps. Each backend chooses their encoding (the
//! sled store writes them as compressed JSON); every field added later
//! reads as its default from an older record.

use super::CapturedTurn;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    /// `client`, `analyst` or `admin`.
    pub role: String,
    /// SHA-256 of the key, hex. The key itself is never stored.
    pub hash: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    pub id: String,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    #[serde(default)]
    pub details: serde_json::Value,
}

/// One chat completion as captured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InferenceRecord {
    pub id: String,
    /// The upstream's completion id (`chatcmpl-…`), when it sent one.
    pub completion_id: Option<String>,
    pub alias: Option<String>,
    pub version: Option<String>,
    pub provider_model: String,
    /// `{messages, params}`.
    pub request: serde_json::Value,
    /// `{choices: [{index, message, finish_reason}], usage, error}`.
    pub response: serde_json::Value,
    pub streamed: bool,
    /// `ok`, `upstream_error`, `client_cancelled` or `partial`.
    pub status: String,
    pub http_status: u16,
    pub latency_ms: f64,
    pub first_byte_ms: Option<f64>,
    pub key_id: String,
    pub user: Option<String>,
    pub tags: std::collections::BTreeMap<String, String>,
    pub conversation_id: String,
    pub created_at: String,
    /// The candidate version that failed before the first byte, when
    /// production served this inference in its place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_from: Option<String>,
    /// For a shadow version's answer: the live inference it mirrors. It
    /// was never returned and is no turn of the conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_of: Option<String>,
    /// Its index among its conversation's turns, set by the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<usize>,
    /// What its conversation's first turn was assigned a version by, so a
    /// follow-up threaded onto it keeps that version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<String>,
    /// Set by the store on the only turn of a conversation nobody has
    /// reviewed yet, which it keeps as this record alone: what the
    /// conversation holds beyond the turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opens: Option<Opening>,
}

/// What a conversation of one unreviewed turn holds beyond its turn.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Opening {
    pub position: Position,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    pub signals: ConversationSignals,
}

/// How much of the first user message a conversation's summary keeps.
const PREVIEW_CHARS: usize = 280;

impl InferenceRecord {
    /// The start of its first user message, on one line: a conversation's
    /// preview.
    pub fn preview(&self) -> String {
        preview_of(&self.request["messages"])
    }

    /// What a conversation of this one turn takes from it.
    pub fn head(&self) -> TurnHead<'_> {
        TurnHead {
            id: &self.id,
            conversation_id: &self.conversation_id,
            created_at: &self.created_at,
            alias: self.alias.as_deref(),
            version: self.version.as_deref(),
            user: self.user.as_deref(),
            provider_model: &self.provider_model,
        }
    }
}

/// The preview of a request's `messages`: the start of the first user
/// message, on one line.
pub fn preview_of(messages: &serde_json::Value) -> String {
    let first_user = messages
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "user"))
        .map(|m| match &m["content"] {
            serde_json::Value::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
            parts => std::borrow::Cow::Owned(crate::capture::threading::message_text(parts)),
        })
        .unwrap_or_default();
    if first_user.is_ascii() {
        return ascii_preview(first_user.as_bytes());
    }
    let mut out = String::with_capacity(PREVIEW_CHARS);
    let mut chars = 0;
    for word in first_user.split_whitespace() {
        if !out.is_empty() {
            if chars == PREVIEW_CHARS {
                break;
            }
            out.push(' ');
            chars += 1;
        }
        // Cut inside the word that reaches the limit.
        let room = PREVIEW_CHARS - chars;
        if let Some((cut, _)) = word.char_indices().nth(room) {
            out.push_str(&word[..cut]);
            break;
        }
        out.push_str(word);
        chars += word.chars().count();
    }
    out
}

/// [`preview_of`] for ASCII text, most of what is captured: splitting it
/// into words by characters showed in the capture writer's profile.
fn ascii_preview(text: &[u8]) -> String {
    let mut out = String::with_capacity(PREVIEW_CHARS);
    join_ascii_words(text, PREVIEW_CHARS, |b| b, &mut out);
    out
}

/// The words of ASCII `text` (split where `char::is_whitespace` splits,
/// which counts the vertical tab that `u8::is_ascii_whitespace` leaves
/// out), each byte passed through `byte`, appended to the empty `out`
/// joined by one space, in one pass over the bytes; `out` stops at
/// `limit` bytes, inside a word if that is where the limit falls.
pub fn join_ascii_words(text: &[u8], limit: usize, byte: impl Fn(u8) -> u8, out: &mut String) {
    out.reserve(text.len().min(limit));
    let mut gap = false;
    for &b in text {
        if b.is_ascii_whitespace() || b == 0x0B {
            gap = true;
            continue;
        }
        if gap && !out.is_empty() {
            if out.len() == limit {
                break;
            }
            out.push(' ');
        }
        gap = false;
        if out.len() == limit {
            break;
        }
        out.push(char::from(byte(b)));
    }
}

/// The fields of a first turn its conversation shows while it has no
/// other turn: what listings read without decoding the request and answer.
pub struct TurnHead<'a> {
    pub id: &'a str,
    pub conversation_id: &'a str,
    pub created_at: &'a str,
    pub alias: Option<&'a str>,
    pub version: Option<&'a str>,
    pub user: Option<&'a str>,
    pub provider_model: &'a str,
}

impl ConversationRecord {
    /// A new conversation for the turn that opens it, before the turn is
    /// appended: what every store backend starts from.
    pub fn opening(turn: &CapturedTurn) -> Self {
        Self {
            id: turn.record.conversation_id.clone(),
            inference_ids: Vec::new(),
            parent_id: turn.parent_id.clone(),
            created_at: turn.record.created_at.clone(),
            updated_at: turn.record.created_at.clone(),
            alias: None,
            versions: Vec::new(),
            user: None,
            preview: turn.preview.clone(),
            fine_tuned_turns: 0,
            review: Review::default(),
            signals: ConversationSignals::default(),
            position: None,
        }
    }

    /// Appends the turn; its index among the conversation's turns (the one
    /// it already has when a retried batch brings it again).
    pub fn append(&mut self, turn: &CapturedTurn) -> usize {
        let r = &turn.record;
        if let Some(at) = self.inference_ids.iter().position(|id| *id == r.id) {
            return at;
        }
        self.inference_ids.push(r.id.clone());
        self.updated_at = r.created_at.clone();
        if self.alias.is_none() {
            self.alias = r.alias.clone();
        }
        if self.user.is_none() {
            self.user = r.user.clone();
        }
        if let Some(v) = r.version.as_ref().filter(|v| !self.versions.contains(v)) {
            self.versions.push(v.clone());
        }
        // OpenAI names fine-tuned models `ft:<base>:…`; compatible
        // providers (and the simulator) follow it.
        self.fine_tuned_turns += u32::from(r.provider_model.starts_with("ft:"));
        self.inference_ids.len() - 1
    }

    /// The conversation a first turn opened, as it stands while it has no
    /// other turn and no review.
    pub fn opened_by(turn: &InferenceRecord, opening: &Opening) -> Self {
        Self::opened_with(turn, opening, turn.preview())
    }

    /// [`Self::opened_by`] with the turn's preview already worked out.
    pub fn opened_with(turn: &InferenceRecord, opening: &Opening, preview: String) -> Self {
        Self::opened_by_head(&turn.head(), opening, preview)
    }

    /// [`Self::opened_with`] from the turn's head alone.
    pub fn opened_by_head(turn: &TurnHead<'_>, opening: &Opening, preview: String) -> Self {
        Self {
            id: turn.conversation_id.to_owned(),
            inference_ids: vec![turn.id.to_owned()],
            parent_id: opening.parent_id.clone(),
            created_at: turn.created_at.to_owned(),
            updated_at: turn.created_at.to_owned(),
            alias: turn.alias.map(str::to_owned),
            versions: turn.version.map(str::to_owned).into_iter().collect(),
            user: turn.user.map(str::to_owned),
            preview,
            // OpenAI names fine-tuned models `ft:<base>:…`; compatible
            // providers (and the simulator) follow it.
            fine_tuned_turns: u32::from(turn.provider_model.starts_with("ft:")),
            review: Review::default(),
            signals: opening.signals.clone(),
            position: Some(opening.position),
        }
    }
}

/// A conversation: its turns in order, what the list view shows of it, and
/// its review by analysts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConversationRecord {
    pub id: String,
    pub inference_ids: Vec<String>,
    /// The conversation this one branched from (a regenerated or edited turn).
    pub parent_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default)]
    pub alias: Option<String>,
    /// Every version that served a turn, in order of first use.
    #[serde(default)]
    pub versions: Vec<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// The start of the first user message, redacted like everything stored.
    #[serde(default)]
    pub preview: String,
    /// Turns served by a fine-tuned model (`ft:` provider models).
    #[serde(default)]
    pub fine_tuned_turns: u32,
    #[serde(default)]
    pub review: Review,
    /// What its turns say of its quality, kept here so a listing filters
    /// on it without reading inferences. Absent (all unset) on
    /// conversations stored before signals existed.
    #[serde(default)]
    pub signals: ConversationSignals,
    /// Where it sits in listings (newest first), set by the store when it
    /// is first stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
}

/// A conversation's place in the listing order: the capture batch that
/// first stored it and its index in that batch.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position(pub u64, pub u32);

/// Quality signals from a conversation's inferences (labels and ratings
/// are read from its review).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ConversationSignals {
    /// The last turn ended with status `ok` and finish_reason `stop`.
    pub complete_answer: bool,
    /// The last turn was a chat app's housekeeping request (tagged
    /// `origin=background_task`).
    pub background_task: bool,
    /// Characters of the last turn's answer.
    pub answer_chars: u32,
    /// Some turn failed upstream.
    pub upstream_error: bool,
    /// The normalised hash of the last turn's messages and answer.
    pub text_hash: Option<String>,
    /// The oldest conversation with the same `text_hash`, set when this
    /// turn was stored; `None` when this one is that conversation.
    pub duplicate_of: Option<String>,
}

/// Where a conversation stands with its reviewers.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReviewStatus {
    #[default]
    Pending,
    Approved,
    Rejected,
}

impl ReviewStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
        }
    }
}

/// An analyst's verdict on a conversation, plus what its feedback adds up to.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Review {
    pub status: ReviewStatus,
    pub threat_type: Option<String>,
    pub severity: Option<String>,
    pub quality_score: Option<u8>,
    pub notes: Option<String>,
    pub correction: Option<String>,
    /// The key id of the last analyst who changed the review.
    pub reviewer: Option<String>,
    pub reviewed_at: Option<String>,
    pub feedback_count: u32,
    pub rating_sum: u32,
    pub rating_count: u32,
    pub thumbs_up: u32,
    pub thumbs_down: u32,
}

impl Review {
    pub fn mean_rating(&self) -> Option<f64> {
        (self.rating_count > 0).then(|| f64::from(self.rating_sum) / f64::from(self.rating_count))
    }

    /// Labelled or approved: worth keeping past retention.
    pub fn is_curated(&self) -> bool {
        self.status == ReviewStatus::Approved
            || self.threat_type.is_some()
            || self.severity.is_some()
            || self.quality_score.is_some()
            || self.correction.is_some()
    }
}

#[cfg(test)]
impl InferenceRecord {
    /// A bare successful turn of `conversation`, for tests.
    pub fn bare(id: &str, conversation: &str) -> Self {
        Self {
            id: id.into(),
            completion_id: None,
            alias: None,
            version: None,
            provider_model: "m".into(),
            request: serde_json::Value::Null,
            response: serde_json::Value::Null,
            streamed: false,
            status: "ok".into(),
            http_status: 200,
            latency_ms: 1.0,
            first_byte_ms: None,
            key_id: "k".into(),
            user: None,
            tags: Default::default(),
            conversation_id: conversation.into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            fallback_from: None,
            shadow_of: None,
            turn: None,
            sticky: None,
            opens: None,
        }
    }
}

/// Dashboard counts over every conversation, kept current with each change
/// (the store subtracts a conversation's old contribution and adds its new
/// one in the same transaction), so the stats never need a scan.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct ConversationTallies {
    pub conversations: i64,
    pub pending: i64,
    pub approved: i64,
    pub rejected: i64,
    pub high_quality: i64,
    pub quality_sum: i64,
    pub quality_count: i64,
    pub rating_sum: i64,
    pub rating_count: i64,
    pub with_feedback: i64,
    pub turns: i64,
    pub fine_tuned_turns: i64,
    pub by_threat_type: BTreeMap<String, i64>,
    pub by_severity: BTreeMap<String, i64>,
    pub approved_by_threat_type: BTreeMap<String, i64>,
    pub by_alias: BTreeMap<String, i64>,
    pub by_version: BTreeMap<String, i64>,
    /// Conversations whose last turn was a chat app's housekeeping
    /// request: traffic, not work for analysts, so they count here and in
    /// the traffic figures (turns, aliases, versions) only.
    pub background_tasks: i64,
}

/// A quality score at or above this makes a conversation "high quality".
pub const HIGH_QUALITY: u8 = 4;

impl ConversationTallies {
    /// Adds (`sign` = 1) or removes (`sign` = -1) one conversation.
    pub fn count(&mut self, c: &ConversationRecord, sign: i64) {
        self.turns += sign * c.inference_ids.len() as i64;
        self.fine_tuned_turns += sign * i64::from(c.fine_tuned_turns);
        bump(&mut self.by_alias, c.alias.as_deref(), sign);
        for version in &c.versions {
            bump(&mut self.by_version, Some(version), sign);
        }
        if c.signals.background_task {
            self.background_tasks += sign;
            return;
        }
        let r = &c.review;
        self.conversations += sign;
        match r.status {
            ReviewStatus::Pending => self.pending += sign,
            ReviewStatus::Approved => self.approved += sign,
            ReviewStatus::Rejected => self.rejected += sign,
        }
        if let Some(q) = r.quality_score {
            self.quality_sum += sign * i64::from(q);
            self.quality_count += sign;
            if q >= HIGH_QUALITY {
                self.high_quality += sign;
            }
        }
        self.rating_sum += sign * i64::from(r.rating_sum);
        self.rating_count += sign * i64::from(r.rating_count);
        if r.feedback_count > 0 {
            self.with_feedback += sign;
        }
        bump(&mut self.by_threat_type, r.threat_type.as_deref(), sign);
        bump(&mut self.by_severity, r.severity.as_deref(), sign);
        if r.status == ReviewStatus::Approved {
            bump(
                &mut self.approved_by_threat_type,
                r.threat_type.as_deref(),
                sign,
            );
        }
    }

    /// Adds another set of counts (a change's delta), dropping counts
    /// that reach zero.
    pub fn add(&mut self, delta: &ConversationTallies) {
        self.conversations += delta.conversations;
        self.pending += delta.pending;
        self.approved += delta.approved;
        self.rejected += delta.rejected;
        self.high_quality += delta.high_quality;
        self.quality_sum += delta.quality_sum;
        self.quality_count += delta.quality_count;
        self.rating_sum += delta.rating_sum;
        self.rating_count += delta.rating_count;
        self.with_feedback += delta.with_feedback;
        self.turns += delta.turns;
        self.fine_tuned_turns += delta.fine_tuned_turns;
        self.background_tasks += delta.background_tasks;
        for (into, delta) in [
            (&mut self.by_threat_type, &delta.by_threat_type),
            (&mut self.by_severity, &delta.by_severity),
            (
                &mut self.approved_by_threat_type,
                &delta.approved_by_threat_type,
            ),
            (&mut self.by_alias, &delta.by_alias),
            (&mut self.by_version, &delta.by_version),
        ] {
            for (k, v) in delta {
                let n = into.entry(k.clone()).or_default();
                *n += v;
                if *n == 0 {
                    into.remove(k);
                }
            }
        }
    }
}

fn bump(counts: &mut BTreeMap<String, i64>, key: Option<&str>, sign: i64) {
    let Some(key) = key else { return };
    let n = counts.entry(key.to_string()).or_default();
    *n += sign;
    if *n == 0 {
        counts.remove(key);
    }
}

/// An entry a store keeps beside its records, to find one by a key the
/// record does not hold (see [`crate::store::Store::for_each_lookup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A continuation key (hex) and the inference that left it.
    Thread { key: String, inference_id: String },
    /// A feedback idempotency key and the feedback it produced.
    Idempotency { key: String, feedback_id: String },
}

/// Where a thread key was left: which conversation, after which turn.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThreadPoint {
    pub conversation_id: String,
    /// Index into the conversation's `inference_ids`.
    pub turn: usize,
    /// What the conversation's first turn was assigned a version by, so
    /// its later turns keep that version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<String>,
}

/// One piece of feedback on an inference.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FeedbackRecord {
    pub id: String,
    pub inference_id: String,
    pub conversation_id: String,
    /// The key id of whoever gave it.
    pub author: String,
    pub rating: Option<u8>,
    pub thumbs: Option<String>,
    pub threat_type: Option<String>,
    pub severity: Option<String>,
    pub quality_score: Option<u8>,
    pub notes: Option<String>,
    pub correction: Option<String>,
    pub approved_for_training: Option<bool>,
    pub created_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The preview as first written: character by character.
    fn reference(text: &str) -> String {
        let mut out = String::new();
        let mut chars = 0;
        'words: for word in text.split_whitespace() {
            for c in (!out.is_empty())
                .then_some(' ')
                .into_iter()
                .chain(word.chars())
            {
                if chars == PREVIEW_CHARS {
                    break 'words;
                }
                out.push(c);
                chars += 1;
            }
        }
        out
    }

    #[test]
    fn a_preview_keeps_the_first_characters_on_one_line() {
        let word = "é".repeat(PREVIEW_CHARS - 3);
        let texts = [
            String::new(),
            "  Alert:\n\tpowershell  -enc  ".into(),
            format!("{word} ab cd"),
            format!("{word} abc"),
            format!("{word} a"),
            format!("{word}xy z"),
            "x".repeat(PREVIEW_CHARS + 5),
            "word ".repeat(100),
            format!("{} ab cd", "a".repeat(PREVIEW_CHARS - 3)),
            format!("{} abc", "a".repeat(PREVIEW_CHARS - 3)),
            format!("{} a", "a".repeat(PREVIEW_CHARS - 2)),
            "x".repeat(PREVIEW_CHARS),
            "tab\tvertical\x0btab\x1cnot space".into(),
            format!("{}  \n b", "a".repeat(PREVIEW_CHARS - 1)),
            format!("{} ", "a".repeat(PREVIEW_CHARS)),
            format!(" \x0b{}", "ab ".repeat(PREVIEW_CHARS)),
        ];
        for text in texts {
            let messages = serde_json::json!([
                {"role": "system", "content": "not this"},
                {"role": "user", "content": text}
            ]);
            assert_eq!(preview_of(&messages), reference(&text), "{text:?}");
        }
        let parts = serde_json::json!([{"role": "user", "content": [{"type": "text", "text": "a b"}, {"type": "text", "text": "c"}]}]);
        assert_eq!(preview_of(&parts), "a b c");
    }
}
