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
use std::sync::{Arc, Mutex, PoisonError};

/// One completed turn of an implicitly threaded conversation, borrowed
/// from the request path: only what is kept is copied.
#[derive(Debug, Clone, Copy)]
pub struct Registration<'a> {
    pub conversation_id: &'a str,
    pub turn: usize,
    pub inference_id: &'a str,
    pub sticky: Option<&'a str>,
    /// The keys a follow-up of this turn may present; none when the turn
    /// failed (nothing to follow up on), though it still counts.
    pub continuations: &'a [String],
}

pub struct RecentThreads {
    capacity: usize,
    /// One short critical section per request that continues or completes
    /// a conversation: a lookup or an insertion, never any I/O.
    inner: Mutex<Inner>,
}

/// A thread key as held here: the 128 bits its 32 hex digits spell
/// (`ThreadHasher::key`), so registering one allocates nothing and hashes
/// two words, not a string.
type Key = u128;

fn key_of(key: &str) -> Option<Key> {
    (key.len() == 32).then(|| Key::from_str_radix(key, 16).ok())?
}

#[derive(Default)]
struct Inner {
    /// Each key's registration, by generation, and where it leaves the
    /// conversation; a turn's keys share one point.
    points: HashMap<Key, (u64, Arc<ThreadPoint>)>,
    heads: HashMap<String, Head>,
    /// Registrations oldest first, for forgetting.
    order: VecDeque<Registered>,
    next: u64,
}

struct Registered {
    generation: u64,
    keys: Vec<Key>,
    point: Arc<ThreadPoint>,
}

/// A conversation's turns as registered here.
#[derive(Default)]
struct Head {
    turns: usize,
    /// Turn index, inference id and generation of the turns registered here.
    registered: Vec<(usize, String, u64)>,
}

impl Head {
    fn add(&mut self, registered: (usize, String, u64)) {
        self.turns = self.turns.max(registered.0 + 1);
        self.registered.push(registered);
    }
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
        let key = key_of(key)?;
        self.inner()
            .points
            .get(&key)
            .map(|(_, p)| ThreadPoint::clone(p))
    }

    /// How many turns the conversation has, if any were registered here.
    pub fn turns(&self, conversation_id: &str) -> Option<usize> {
        self.inner().heads.get(conversation_id).map(|h| h.turns)
    }

    /// Registers a completed turn. A continuation that is not a thread key
    /// (`ThreadHasher::key`) could never be presented, and is not kept.
    pub fn register(&self, r: Registration<'_>) {
        let point = Arc::new(ThreadPoint {
            conversation_id: r.conversation_id.to_string(),
            turn: r.turn,
            sticky: r.sticky.map(String::from),
        });
        let keys: Vec<Key> = r.continuations.iter().filter_map(|k| key_of(k)).collect();
        let mut guard = self.inner();
        let inner = &mut *guard;
        let generation = inner.next;
        inner.next += 1;
        let registered = (r.turn, r.inference_id.to_string(), generation);
        // Looked up by `&str` first: a conversation's id is copied once.
        match inner.heads.get_mut(r.conversation_id) {
            Some(head) => head.add(registered),
            None => {
                let mut head = Head::default();
                head.add(registered);
                inner.heads.insert(r.conversation_id.to_string(), head);
            }
        }
        for key in &keys {
            inner.points.insert(*key, (generation, Arc::clone(&point)));
        }
        inner.order.push_back(Registered {
            generation,
            keys,
            point,
        });
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
        let Some(oldest) = self.order.pop_front() else {
            return;
        };
        for key in &oldest.keys {
            if self
                .points
                .get(key)
                .is_some_and(|(g, _)| *g == oldest.generation)
            {
                self.points.remove(key);
            }
        }
        let conversation = oldest.point.conversation_id.as_str();
        if let Some(head) = self.heads.get_mut(conversation) {
            head.registered.retain(|(.., g)| *g != oldest.generation);
            if head.registered.is_empty() {
                self.heads.remove(conversation);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::responses::response_key;

    /// Registers turn `turn` of `conversation`, continued by the keys named.
    fn register(r: &RecentThreads, conversation: &str, turn: usize, keys: &[&str]) {
        let continuations: Vec<String> = keys.iter().map(|k| response_key(k)).collect();
        r.register(Registration {
            conversation_id: conversation,
            turn,
            inference_id: &format!("inf_{conversation}_{turn}"),
            sticky: Some("user:a"),
            continuations: &continuations,
        });
    }

    fn point(r: &RecentThreads, key: &str) -> Option<ThreadPoint> {
        r.point(&response_key(key))
    }

    #[test]
    fn a_registered_turn_is_found_by_its_key_with_its_conversation_length() {
        let r = RecentThreads::new(10);
        register(&r, "c1", 0, &["k0"]);
        register(&r, "c1", 1, &[]);
        let p = point(&r, "k0").unwrap();
        assert_eq!((p.conversation_id.as_str(), p.turn), ("c1", 0));
        assert_eq!(p.sticky.as_deref(), Some("user:a"));
        assert_eq!(r.turns("c1"), Some(2));
        assert_eq!(point(&r, "k1"), None);
        assert_eq!(r.turns_from("c1", 1), [(1, "inf_c1_1".to_string())]);
    }

    #[test]
    fn the_oldest_registrations_are_forgotten_past_capacity() {
        let r = RecentThreads::new(2);
        register(&r, "c1", 0, &["a"]);
        register(&r, "c2", 0, &["b"]);
        register(&r, "c2", 1, &["c"]);
        assert_eq!(point(&r, "a"), None);
        assert_eq!(r.turns("c1"), None);
        assert_eq!(r.turns("c2"), Some(2));
        assert!(point(&r, "b").is_some() && point(&r, "c").is_some());
    }

    #[test]
    fn a_turn_is_found_by_each_of_its_keys_and_forgotten_with_all_of_them() {
        let r = RecentThreads::new(1);
        register(&r, "c1", 0, &["history", "response"]);
        assert_eq!(point(&r, "history"), point(&r, "response"));
        assert_eq!(point(&r, "response").unwrap().conversation_id, "c1");
        register(&r, "c2", 0, &["other"]);
        assert_eq!((point(&r, "history"), point(&r, "response")), (None, None));
    }

    #[test]
    fn a_key_registered_again_belongs_to_its_latest_turn_until_that_is_forgotten() {
        let r = RecentThreads::new(2);
        register(&r, "c1", 0, &["same"]);
        register(&r, "c2", 0, &["same"]);
        assert_eq!(point(&r, "same").unwrap().conversation_id, "c2");
        // Forgetting c1's turn leaves c2's claim on the key.
        register(&r, "c3", 0, &[]);
        assert_eq!(point(&r, "same").unwrap().conversation_id, "c2");
    }

    #[test]
    fn what_is_not_a_thread_key_is_neither_kept_nor_found() {
        let r = RecentThreads::new(4);
        let odd = ["k0".to_string(), "z".repeat(32)];
        r.register(Registration {
            conversation_id: "c1",
            turn: 0,
            inference_id: "inf_1",
            sticky: None,
            continuations: &odd,
        });
        assert_eq!(r.turns("c1"), Some(1), "the turn still counts");
        assert!(odd.iter().all(|k| r.point(k).is_none()));
        assert!(r.inner().points.is_empty());
    }
}
