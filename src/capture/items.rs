//! Items a client put into a conversation the provider keeps, through
//! Flywheel (`POST /v1/conversations` with `items`, `POST
//! /v1/conversations/{id}/items`), waiting for the conversation's next
//! turn: the model reads them in front of that turn's input, so capture
//! stores them there, and a dataset of the conversation holds them.
//!
//! Kept in memory, bounded: the newest conversations first, at most
//! [`MAX_BYTES`] of items in all. Items whose conversation has no turn
//! before they are pushed out, or before a restart, or that another
//! replica passed on, are not stored (docs/API.md says so).

use lru::LruCache;
use parking_lot::Mutex;
use serde_json::Value;
use std::num::NonZeroUsize;

/// Conversations with items waiting, at most.
const MAX_CONVERSATIONS: usize = 4096;
/// Bytes of items waiting (as their requests sent them), at most.
pub const MAX_BYTES: usize = 16 * 1024 * 1024;

pub struct PendingItems(Mutex<Inner>);

struct Inner {
    /// Conversation key → its items in order, and their size in bytes.
    waiting: LruCache<String, (Vec<Value>, usize)>,
    bytes: usize,
}

impl Default for PendingItems {
    fn default() -> Self {
        let capacity = NonZeroUsize::new(MAX_CONVERSATIONS).unwrap_or(NonZeroUsize::MIN);
        Self(Mutex::new(Inner {
            waiting: LruCache::new(capacity),
            bytes: 0,
        }))
    }
}

impl PendingItems {
    /// Items added to the conversation keyed `key`, `bytes` long as sent,
    /// after any already waiting.
    pub fn add(&self, key: String, items: Vec<Value>, bytes: usize) {
        if items.is_empty() || bytes > MAX_BYTES {
            return;
        }
        let mut guard = self.0.lock();
        let inner = &mut *guard;
        // A new conversation in a full cache pushes the oldest out: its
        // bytes go with it.
        if inner.waiting.len() == inner.waiting.cap().get()
            && !inner.waiting.contains(&key)
            && let Some((_, (_, b))) = inner.waiting.pop_lru()
        {
            inner.bytes -= b;
        }
        let (waiting, held) = inner.waiting.get_or_insert_mut(key, Default::default);
        waiting.extend(items);
        *held += bytes;
        inner.bytes += bytes;
        while inner.bytes > MAX_BYTES {
            match inner.waiting.pop_lru() {
                Some((_, (_, b))) => inner.bytes -= b,
                None => break,
            }
        }
    }

    /// The items waiting for the next turn of the conversation keyed `key`,
    /// taken.
    pub fn take(&self, key: &str) -> Vec<Value> {
        let mut inner = self.0.lock();
        match inner.waiting.pop(key) {
            Some((items, bytes)) => {
                inner.bytes -= bytes;
                items
            }
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(text: &str) -> Value {
        json!({"type": "message", "role": "user", "content": text})
    }

    #[test]
    fn items_wait_in_order_for_their_conversations_next_turn_once() {
        let pending = PendingItems::default();
        pending.add("a".into(), vec![item("alert")], 10);
        pending.add("b".into(), vec![item("other")], 10);
        pending.add("a".into(), vec![item("more"), item("evidence")], 20);
        assert_eq!(
            pending.take("a"),
            [item("alert"), item("more"), item("evidence")]
        );
        assert!(pending.take("a").is_empty(), "taken once");
        assert_eq!(pending.take("b"), [item("other")]);
        assert!(pending.take("c").is_empty());
    }

    #[test]
    fn the_oldest_conversations_go_first_past_the_byte_bound() {
        let pending = PendingItems::default();
        let half = MAX_BYTES / 2;
        pending.add("old".into(), vec![item("1")], half);
        pending.add("newer".into(), vec![item("2")], half);
        pending.add("newest".into(), vec![item("3")], half);
        assert!(pending.take("old").is_empty());
        assert_eq!(pending.take("newer"), [item("2")]);
        assert_eq!(pending.take("newest"), [item("3")]);
        pending.add("huge".into(), vec![item("4")], MAX_BYTES + 1);
        assert!(pending.take("huge").is_empty());
    }
}
