//! Threading for turns the store does not hold yet. When an answer
//! completes, the request path registers here, before the client can read
//! the answer's last byte, the key a follow-up will present and how many
//! turns the conversation then has. A follow-up looks here first and then
//! in the store, so it finds its predecessor however far behind the
//! capture writer is — threading never depends on the writer being
//! scheduled in time.
//!
//! Memory is bounded: the oldest registrations are forgotten past
//! `capacity`, which is set above the most exchanges capture can hold
//! unwritten (its queue, the waiting room and the writer's batch), so an
//! entry is only ever forgotten once the store has it too.

use crate::store::ThreadPoint;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

/// One completed turn of an implicitly threaded conversation.
#[derive(Debug, Clone)]
pub struct Registration {
    pub conversation_id: String,
    pub turn: usize,
    pub inference_id: String,
    pub sticky: Option<String>,
    /// The keys a follow-up of this turn may present; none when the turn
    /// failed (nothing to follow up on), though it still counts.
    pub continuations: Vec<String>,
}

pub struct RecentThreads {
    capacity: usize,
    /// One short critical section per request that continues or completes
    /// a conversation: a lookup or an insertion, never any I/O.
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    points: HashMap<String, (u64, ThreadPoint)>,
    heads: HashMap<String, Head>,
    /// Registrations oldest first, for forgetting: (generation, key, conversation).
    order: VecDeque<(u64, Vec<String>, String)>,
    next: u64,
}

/// A conversation's turns as registered here.
#[derive(Default)]
struct Head {
    turns: usize,
    /// Turn index, inference id and generation of the turns registered here.
    registered: Vec<(usize, String, u64)>,
}

impl RecentThreads {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where `key` was left, if registered here.
    pub fn point(&self, key: &str) -> Option<ThreadPoint> {
        self.inner().points.get(key).map(|(_, p)| p.clone())
    }

    /// How many turns the conversation has, if any were registered here.
    pub fn turns(&self, conversation_id: &str) -> Option<usize> {
        self.inner().heads.get(conversation_id).map(|h| h.turns)
    }

    pub fn register(&self, r: Registration) {
        let mut inner = self.inner();
        let generation = inner.next;
        inner.next += 1;
        let head = inner.heads.entry(r.conversation_id.clone()).or_default();
        head.turns = head.turns.max(r.turn + 1);
        head.registered.push((r.turn, r.inference_id, generation));
        let point = ThreadPoint {
            conversation_id: r.conversation_id.clone(),
            turn: r.turn,
            sticky: r.sticky,
        };
        for key in &r.continuations {
            inner
                .points
                .insert(key.clone(), (generation, point.clone()));
        }
        inner
            .order
            .push_back((generation, r.continuations, r.conversation_id));
        while inner.order.len() > self.capacity {
            inner.forget_oldest();
        }
    }

    /// The turns registered for the conversation from index `from` on,
    /// as (turn, inference id): those the store may not hold yet.
    pub fn turns_from(&self, conversation_id: &str, from: usize) -> Vec<(usize, String)> {
        let inner = self.inner();
        let Some(head) = inner.heads.get(conversation_id) else {
            return Vec::new();
        };
        let mut turns: Vec<(usize, String)> = head
            .registered
            .iter()
            .filter(|(turn, ..)| *turn >= from)
            .map(|(turn, id, _)| (*turn, id.clone()))
            .collect();
        turns.sort();
        turns
    }
}

impl Inner {
    fn forget_oldest(&mut self) {
        let Some((generation, keys, conversation)) = self.order.pop_front() else {
            return;
        };
        for key in keys {
            if self.points.get(&key).is_some_and(|(g, _)| *g == generation) {
                self.points.remove(&key);
            }
        }
        if let Some(head) = self.heads.get_mut(&conversation) {
            head.registered.retain(|(.., g)| *g != generation);
            if head.registered.is_empty() {
                self.heads.remove(&conversation);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(conversation: &str, turn: usize, key: Option<&str>) -> Registration {
        Registration {
            conversation_id: conversation.into(),
            turn,
            inference_id: format!("inf_{conversation}_{turn}"),
            sticky: Some("user:a".into()),
            continuations: key.map(String::from).into_iter().collect(),
        }
    }

    #[test]
    fn a_registered_turn_is_found_by_its_key_with_its_conversation_length() {
        let r = RecentThreads::new(10);
        r.register(turn("c1", 0, Some("k0")));
        r.register(turn("c1", 1, None));
        let p = r.point("k0").unwrap();
        assert_eq!((p.conversation_id.as_str(), p.turn), ("c1", 0));
        assert_eq!(p.sticky.as_deref(), Some("user:a"));
        assert_eq!(r.turns("c1"), Some(2));
        assert_eq!(r.point("k1"), None);
        assert_eq!(r.turns_from("c1", 1), [(1, "inf_c1_1".to_string())]);
    }

    #[test]
    fn the_oldest_registrations_are_forgotten_past_capacity() {
        let r = RecentThreads::new(2);
        r.register(turn("c1", 0, Some("a")));
        r.register(turn("c2", 0, Some("b")));
        r.register(turn("c2", 1, Some("c")));
        assert_eq!(r.point("a"), None);
        assert_eq!(r.turns("c1"), None);
        assert_eq!(r.turns("c2"), Some(2));
        assert!(r.point("b").is_some() && r.point("c").is_some());
    }

    #[test]
    fn a_turn_is_found_by_each_of_its_keys_and_forgotten_with_all_of_them() {
        let r = RecentThreads::new(1);
        let mut both = turn("c1", 0, Some("history"));
        both.continuations.push("response".into());
        r.register(both);
        assert_eq!(r.point("history"), r.point("response"));
        assert_eq!(r.point("response").unwrap().conversation_id, "c1");
        r.register(turn("c2", 0, Some("other")));
        assert_eq!((r.point("history"), r.point("response")), (None, None));
    }
}
