//! The candidates of a dataset: every conversation the filter matches,
//! found page by page through review's index walk, each with its turns
//! and their feedback.

use super::{DatasetError, DatasetFilter};
use crate::curation::Candidate;
use crate::openai::ApiError;
use crate::review::{ListQuery, list_conversations};
use crate::store::{ConversationRecord, Store, StoreError};

/// Most conversations one build reads. Far above `fine_tuning.max_examples`
/// (a build that large is refused anyway); it bounds the memory and time
/// of a filter that matches the whole store.
pub const MAX_CANDIDATES: usize = 50_000;

/// Conversations per page of the walk (the listing's largest page).
const PAGE: usize = 500;

/// Every conversation `filter` (already checked) matches, oldest first,
/// with its turns; [`DatasetError::TooManyCandidates`] past the cap.
pub fn candidates(
    store: &dyn Store,
    filter: &DatasetFilter,
) -> Result<Vec<Candidate>, DatasetError> {
    let mut matched = Vec::new();
    let mut cursor = None;
    loop {
        let page = list_conversations(store, query(filter, cursor)).map_err(listing_error)?;
        matched.extend(page.data.into_iter().filter(|c| keeps(filter, c)));
        if matched.len() > MAX_CANDIDATES {
            return Err(DatasetError::TooManyCandidates);
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    matched.reverse();
    matched.into_iter().map(|c| with_turns(store, c)).collect()
}

/// The listing query for one page: a single threat type or severity is
/// walked on its index; several are checked by [`keeps`].
fn query(filter: &DatasetFilter, cursor: Option<String>) -> ListQuery {
    let single = |values: &Option<Vec<String>>| match values.as_deref() {
        Some([one]) => Some(one.clone()),
        _ => None,
    };
    ListQuery {
        status: filter.status,
        threat_type: single(&filter.threat_types),
        severity: single(&filter.severities),
        min_quality: filter.min_quality,
        alias: filter.alias.clone(),
        since: filter.since.clone(),
        until: filter.until.clone(),
        complete: filter.complete,
        has_labels: filter.has_labels,
        has_rating: filter.has_rating,
        duplicate: filter.duplicate,
        upstream_error: filter.upstream_error,
        min_answer_chars: filter.min_answer_chars,
        background_task: filter.background_task,
        cursor,
        limit: Some(PAGE),
        q: None,
        version: None,
        user: None,
    }
}

fn keeps(filter: &DatasetFilter, c: &ConversationRecord) -> bool {
    let among = |values: &Option<Vec<String>>, have: Option<&String>| {
        values
            .as_ref()
            .is_none_or(|v| have.is_some_and(|h| v.contains(h)))
    };
    among(&filter.threat_types, c.review.threat_type.as_ref())
        && among(&filter.severities, c.review.severity.as_ref())
}

/// The filter was checked before the walk, so what the listing can still
/// refuse is the store failing.
fn listing_error(e: ApiError) -> DatasetError {
    DatasetError::Store(StoreError::Io(e.to_string()))
}

/// A turn whose record was lost in a crash is left out, as the export does.
fn with_turns(
    store: &dyn Store,
    conversation: ConversationRecord,
) -> Result<Candidate, DatasetError> {
    let turns = crate::review::stored_turns(store, &conversation)?;
    Ok(Candidate {
        conversation,
        turns,
    })
}
