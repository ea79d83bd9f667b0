//! `GET /admin/api/conversations`: filters turned into one index walk plus
//! a check of the remaining filters (quality signals among them) on each
//! conversation met.

use super::SignalFilter;
use crate::openai::ApiError;
use crate::store::{
    ConversationPage, ConversationRecord, ConversationScan, ConversationTallies, IndexField,
    ReviewStatus, Store,
};
use serde::Deserialize;

/// The default and largest page sizes of the admin API's lists.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;
/// Conversations looked at per page: bounds the time of a page whose
/// filters match little (its cursor then goes on from where it stopped).
const SCAN_BUDGET: usize = 2_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub status: Option<ReviewStatus>,
    pub threat_type: Option<String>,
    pub severity: Option<String>,
    pub min_quality: Option<u8>,
    pub alias: Option<String>,
    pub version: Option<String>,
    pub user: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub q: Option<String>,
    pub complete: Option<bool>,
    pub has_labels: Option<bool>,
    pub has_rating: Option<bool>,
    pub duplicate: Option<bool>,
    pub upstream_error: Option<bool>,
    pub min_answer_chars: Option<u32>,
    /// Chat apps' housekeeping requests only (`true`); left out otherwise.
    pub background_task: Option<bool>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
}

/// A validated listing: which index to walk, and what else to check.
struct Filters {
    status: Option<ReviewStatus>,
    threat_type: Option<String>,
    severity: Option<String>,
    min_quality: Option<u8>,
    alias: Option<String>,
    version: Option<String>,
    user: Option<String>,
    /// Lower-cased.
    text: Option<String>,
    signals: SignalFilter,
}

impl Filters {
    fn keep(&self, c: &ConversationRecord) -> bool {
        let r = &c.review;
        let same = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        self.status.is_none_or(|s| r.status == s)
            && same(&self.threat_type, r.threat_type.as_deref())
            && same(&self.severity, r.severity.as_deref())
            && same(&self.alias, c.alias.as_deref())
            && same(&self.user, c.user.as_deref())
            && self
                .version
                .as_deref()
                .is_none_or(|v| c.versions.iter().any(|x| x == v))
            && self
                .min_quality
                .is_none_or(|m| r.quality_score.is_some_and(|q| q >= m))
            && self.text.as_deref().is_none_or(|t| mentions(c, t))
            && self.signals.keep(c)
    }

    /// The exact filter with the fewest conversations (a user is taken as
    /// the most selective: users are not tallied): the index walked; every
    /// filter is checked on each conversation met.
    fn index(&self, tallies: &ConversationTallies) -> Option<(IndexField, String)> {
        let count = |map: &std::collections::BTreeMap<String, i64>, key: &str| {
            map.get(key).copied().unwrap_or(0)
        };
        let status_count = |s: ReviewStatus| match s {
            ReviewStatus::Pending => tallies.pending,
            ReviewStatus::Approved => tallies.approved,
            ReviewStatus::Rejected => tallies.rejected,
        };
        let candidates = [
            self.user
                .as_ref()
                .map(|v| (IndexField::User, v.clone(), -1)),
            self.status
                .map(|s| (IndexField::Status, s.as_str().to_string(), status_count(s))),
            self.threat_type.as_ref().map(|v| {
                let n = count(&tallies.by_threat_type, v);
                (IndexField::ThreatType, v.clone(), n)
            }),
            self.severity.as_ref().map(|v| {
                (
                    IndexField::Severity,
                    v.clone(),
                    count(&tallies.by_severity, v),
                )
            }),
            self.alias
                .as_ref()
                .map(|v| (IndexField::Alias, v.clone(), count(&tallies.by_alias, v))),
            self.version.as_ref().map(|v| {
                (
                    IndexField::Version,
                    v.clone(),
                    count(&tallies.by_version, v),
                )
            }),
        ];
        candidates
            .into_iter()
            .flatten()
            .min_by_key(|(_, _, n)| *n)
            .map(|(field, value, _)| (field, value))
    }
}

/// Case-insensitive search over what a summary holds: the start of the
/// first user message, notes, correction, user and id.
fn mentions(c: &ConversationRecord, needle: &str) -> bool {
    let r = &c.review;
    [
        Some(c.preview.as_str()),
        r.notes.as_deref(),
        r.correction.as_deref(),
        c.user.as_deref(),
        Some(c.id.as_str()),
    ]
    .into_iter()
    .flatten()
    .any(|hay| hay.to_lowercase().contains(needle))
}

/// RFC 3339 (any offset, fractional seconds allowed) or a bare date,
/// normalised to the stored form (`2026-11-25T09:00:00Z`); `None` when it
/// is neither.
pub fn normalise_time(value: &str) -> Option<String> {
    let full = if value.len() == 10 {
        format!("{value}T00:00:00Z")
    } else {
        value.to_string()
    };
    let parsed = humantime::parse_rfc3339_weak(&full).ok()?;
    Some(humantime::format_rfc3339_seconds(parsed).to_string())
}

fn parse_time(name: &str, value: &str) -> Result<String, ApiError> {
    normalise_time(value).ok_or_else(|| {
        ApiError::invalid(
            format!("`{name}` must be an RFC 3339 time or a date (YYYY-MM-DD), got `{value}`"),
            Some(name),
        )
    })
}

/// One page of conversations matching `query`, newest first.
pub fn list_conversations(
    store: &dyn Store,
    query: ListQuery,
) -> Result<ConversationPage, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(
            format!("`limit` must be 1 to {MAX_LIMIT}"),
            Some("limit"),
        ));
    }
    if let Some(cursor) = &query.cursor
        && hex::decode(cursor).is_err()
    {
        return Err(ApiError::invalid(
            "`cursor` is not one this API returned",
            Some("cursor"),
        ));
    }
    let since = query
        .since
        .as_deref()
        .map(|v| parse_time("since", v))
        .transpose()?;
    let until = query
        .until
        .as_deref()
        .map(|v| parse_time("until", v))
        .transpose()?;
    let filters = Filters {
        status: query.status,
        threat_type: query.threat_type,
        severity: query.severity,
        min_quality: query.min_quality,
        alias: query.alias,
        version: query.version,
        user: query.user,
        text: query.q.map(|q| q.to_lowercase()).filter(|q| !q.is_empty()),
        signals: SignalFilter {
            complete: query.complete,
            has_labels: query.has_labels,
            has_rating: query.has_rating,
            duplicate: query.duplicate,
            upstream_error: query.upstream_error,
            min_answer_chars: query.min_answer_chars,
            background_task: query.background_task,
        },
    };
    let internal = |e: crate::store::StoreError| ApiError::Internal(e.to_string());
    let tallies = store.tallies().map_err(internal)?;
    let scan = ConversationScan {
        index: filters.index(&tallies),
        since,
        until,
        cursor: query.cursor,
        limit,
        budget: SCAN_BUDGET.max(limit),
    };
    store
        .list_conversations(&scan, &|c| filters.keep(c))
        .map_err(internal)
}
