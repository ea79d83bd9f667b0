//! Which conversation a chat request belongs to, decided before it goes
//! upstream, and the registration that lets its follow-up find it the
//! moment its answer completes.

use crate::capture::threading::ThreadHasher;
use crate::capture::{RecentThreads, Registration, answer, responses};
use crate::exchange::Wire;
use crate::ids;
use crate::openai::ApiError;
use crate::store::{SharedStore, ThreadPoint};
use axum::http::{HeaderMap, HeaderName};
use std::sync::Arc;

/// The longest `x-flywheel-conversation-id` accepted.
pub const MAX_CONVERSATION_ID: usize = 128;

/// The conversation of one request.
#[derive(Debug)]
pub struct Thread {
    pub conversation_id: String,
    /// Set when this request branches off another conversation.
    pub parent_id: Option<String>,
    /// The client named the conversation (`x-flywheel-conversation-id`).
    pub explicit: bool,
    /// The key the conversation's first turn was assigned its version by.
    pub sticky: Option<String>,
    /// This request's turn in an implicitly threaded conversation.
    pub turn: Option<usize>,
}

/// The client's explicit conversation id: absent when not sent (or
/// blank), a 400 naming the header when it cannot be one.
pub fn explicit_conversation(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    const CONVERSATION_ID: HeaderName = HeaderName::from_static("x-flywheel-conversation-id");
    let Some(value) = headers.get(CONVERSATION_ID) else {
        return Ok(None);
    };
    let bad = |why: &str| {
        Err(ApiError::invalid(
            format!("`x-flywheel-conversation-id` {why}"),
            Some("x-flywheel-conversation-id"),
        ))
    };
    let Ok(id) = value.to_str().map(str::trim) else {
        return bad("must be visible ASCII text");
    };
    if id.len() > MAX_CONVERSATION_ID {
        return bad(&format!(
            "is {} characters long; at most {MAX_CONVERSATION_ID} are allowed",
            id.len()
        ));
    }
    Ok((!id.is_empty()).then_some(id))
}

/// The conversation of this request and, for a branch, its parent: the
/// client's explicit id when it sent one; else the conversation whose
/// latest turn this history continues; else a branch of one that has
/// moved on since (a regenerated or edited turn); else a new one.
///
/// Turns completed a moment ago are found in `recent` whether or not the
/// capture writer has stored them yet; older ones in the store.
///
/// A new conversation takes the ULID of its first inference (`inference_id`):
/// the store then keeps a conversation of one unreviewed turn as that
/// turn's record alone.
pub fn resolve(
    explicit: Option<&str>,
    history_key: Option<&str>,
    inference_id: &str,
    recent: &RecentThreads,
    store: &SharedStore,
) -> Thread {
    if let Some(id) = explicit {
        return Thread {
            conversation_id: id.to_string(),
            parent_id: None,
            explicit: true,
            sticky: None,
            turn: None,
        };
    }
    let continued = history_key.and_then(|key| {
        let point = recent
            .point(key)
            .or_else(|| store.thread(key).ok().flatten())?;
        let turns = turns(&point, recent, store)?;
        Some((point, turns))
    });
    let new_id = || match inference_id.strip_prefix("inf_") {
        Some(ulid) => format!("conv_{ulid}"),
        None => ids::new_id("conv"),
    };
    let (conversation_id, parent_id, sticky, turn) = match continued {
        Some((point, turns)) if point.turn + 1 == turns => {
            (point.conversation_id, None, point.sticky, turns)
        }
        Some((point, _)) => (new_id(), Some(point.conversation_id), point.sticky, 0),
        None => (new_id(), None, None, 0),
    };
    Thread {
        conversation_id,
        parent_id,
        explicit: false,
        sticky,
        turn: Some(turn),
    }
}

/// How many turns the point's conversation has: as registered recently,
/// else as stored; `None` when it is gone.
fn turns(point: &ThreadPoint, recent: &RecentThreads, store: &SharedStore) -> Option<usize> {
    recent.turns(&point.conversation_id).or_else(|| {
        store
            .conversation(&point.conversation_id)
            .ok()
            .flatten()
            .map(|c| c.inference_ids.len())
    })
}

/// What the request path registers when the answer completes.
pub struct TurnThreading {
    /// A chat answer completes the key of the messages; a response's key
    /// is its id's (`previous_response_id` names it).
    pub wire: Wire,
    /// The request's messages hashed; the answer completes the key. None
    /// for a response that names its predecessor: its input is not the
    /// whole history, so only its id's key threads a follow-up.
    pub prefix: Option<ThreadHasher>,
    /// The turn, when threaded implicitly (explicit conversations are
    /// named by the client on every turn and need no registration).
    pub turn: Option<usize>,
    /// The key of the provider's conversation object the turn was in: the
    /// next turn in it presents the same.
    pub conversation_key: Option<String>,
    pub recent: Arc<RecentThreads>,
}

impl TurnThreading {
    /// The keys a follow-up of this exchange may present, when it
    /// succeeded with an answer; registers the turn for the follow-up.
    pub fn complete(
        self,
        conversation_id: &str,
        inference_id: &str,
        sticky: Option<&str>,
        answered: Option<(&[u8], bool)>,
    ) -> Vec<String> {
        let mut continuations = answered
            .map(|(body, streamed)| self.continuations(body, streamed))
            .unwrap_or_default();
        if answered.is_some() {
            continuations.extend(self.conversation_key);
        }
        if let Some(turn) = self.turn {
            self.recent.register(Registration {
                conversation_id,
                turn,
                inference_id,
                sticky,
                continuations: &continuations,
            });
        }
        continuations
    }

    /// A chat answer completes the request's history key. A response
    /// leaves its id's key (`previous_response_id` names it), its last
    /// output item's (an `item_reference` names it) and, when its input
    /// was the whole history, the history key too, so a client that
    /// resends the history instead (the AI SDK's tool loop) threads alike.
    fn continuations(&self, body: &[u8], streamed: bool) -> Vec<String> {
        let mut keys = Vec::with_capacity(2);
        let answer = match self.wire {
            Wire::Responses => {
                let answered = responses::answered(body, streamed);
                keys.extend(answered.id.as_deref().map(responses::response_key));
                keys.extend(answered.last_item.as_deref().map(responses::item_key));
                Some(answered.answer)
            }
            Wire::Chat if streamed => answer::from_stream(body),
            Wire::Chat => answer::from_body(body),
        };
        if let (Some(prefix), Some(answer)) = (&self.prefix, answer) {
            let mut key = prefix.clone();
            key.add("assistant", &answer.text, &answer.calls, None);
            keys.push(key.key());
        }
        keys
    }
}
