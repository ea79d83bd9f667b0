//! The duplicate check's memory of recent answers: which conversation owns
//! a text, as the check last found it in the store. Finding an owner in
//! the store means decoding the candidate's record to see that it still
//! holds the text (a tenth of capture's work when alerts recur); an owner
//! remembered here is known to, because every conversation change passes
//! through [`SledStore::commit`](super::SledStore), which forgets an owner
//! the change takes the text from. Bounded: the least recently used
//! owners go first.

use super::runs;
use crate::store::{ConversationRecord, ConversationSignals};
use lru::LruCache;
use std::num::NonZeroUsize;

/// How many owners are remembered: about 8 MiB at most, enough for the
/// distinct alert texts of days of triage.
const CAPACITY: NonZeroUsize = NonZeroUsize::MIN.saturating_add(65_535);

/// The conversation that owns a text, where it is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    pub slot: Vec<u8>,
    pub id: String,
}

pub struct TextOwners(LruCache<runs::Key, Owner>);

impl Default for TextOwners {
    fn default() -> Self {
        Self(LruCache::new(CAPACITY))
    }
}

impl TextOwners {
    pub fn get(&mut self, text: &runs::Key) -> Option<Owner> {
        self.0.get(text).cloned()
    }

    /// Remembers an owner found in the store or written by a committed
    /// batch.
    pub fn remember(&mut self, text: runs::Key, owner: Owner) {
        self.0.put(text, owner);
    }

    /// Forgets the owners a committed change made untrue: a conversation
    /// that owned a text before and does not after (a new turn, a review
    /// that marks it a duplicate, its deletion).
    pub fn committed(
        &mut self,
        states: &[(
            Vec<u8>,
            Option<&ConversationRecord>,
            Option<&ConversationRecord>,
        )],
    ) {
        for (slot, before, after) in states {
            let Some(text) = before.and_then(|b| owned_text(&b.signals)) else {
                continue;
            };
            if after.and_then(|a| owned_text(&a.signals)) == Some(text) {
                continue;
            }
            let key = super::capture::hashed(text);
            if self.0.peek(&key).is_some_and(|o| o.slot == *slot) {
                self.0.pop(&key);
            }
        }
    }
}

/// The text a conversation with these signals owns: its text hash,
/// unless it is a duplicate of another's.
pub fn owned_text(signals: &ConversationSignals) -> Option<&str> {
    match &signals.duplicate_of {
        None => signals.text_hash.as_deref(),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(
        id: &str,
        text: Option<&str>,
        duplicate_of: Option<&str>,
    ) -> ConversationRecord {
        let mut c: ConversationRecord =
            serde_json::from_value(serde_json::json!({"id": id, "inference_ids": ["inf_1"],
                "created_at": "2026-12-05T00:00:00Z", "updated_at": "2026-12-05T00:00:00Z"}))
            .expect("a conversation");
        c.signals.text_hash = text.map(String::from);
        c.signals.duplicate_of = duplicate_of.map(String::from);
        c
    }

    fn owner(slot: u8, id: &str) -> Owner {
        Owner {
            slot: vec![slot],
            id: id.into(),
        }
    }

    #[test]
    fn an_owner_is_forgotten_once_a_change_takes_its_text() {
        let mut owners = TextOwners::default();
        let (a, b) = (
            super::super::capture::hashed("a"),
            super::super::capture::hashed("b"),
        );
        owners.remember(a, owner(1, "conv_1"));
        owners.remember(b, owner(2, "conv_2"));
        let holds_a = conversation("conv_1", Some("a"), None);
        let moved_on = conversation("conv_1", Some("c"), None);
        let marked = conversation("conv_2", Some("b"), Some("conv_9"));
        let holds_b = conversation("conv_2", Some("b"), None);
        // A review that keeps the text keeps the owner.
        owners.committed(&[(vec![1], Some(&holds_a), Some(&holds_a))]);
        assert_eq!(owners.get(&a), Some(owner(1, "conv_1")));
        owners.committed(&[
            (vec![1], Some(&holds_a), Some(&moved_on)),
            (vec![2], Some(&holds_b), Some(&marked)),
        ]);
        assert_eq!((owners.get(&a), owners.get(&b)), (None, None));
        owners.remember(a, owner(1, "conv_1"));
        owners.committed(&[(vec![1], Some(&holds_a), None)]);
        assert_eq!(owners.get(&a), None, "deleted");
    }

    #[test]
    fn another_conversation_losing_the_text_leaves_the_owner() {
        let mut owners = TextOwners::default();
        let a = super::super::capture::hashed("a");
        owners.remember(a, owner(1, "conv_1"));
        let other = conversation("conv_2", Some("a"), None);
        owners.committed(&[(vec![2], Some(&other), None)]);
        assert_eq!(owners.get(&a), Some(owner(1, "conv_1")));
    }
}
