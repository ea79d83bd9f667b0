//! What the simulator keeps in memory by id — stored responses,
//! conversation objects — the newest [`KEPT`] of each kind: the oldest go
//! first, so memory stays bounded however long it runs.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// How many of a kind are kept.
pub const KEPT: usize = 4096;

pub struct Newest<V> {
    inner: Mutex<Inner<V>>,
}

struct Inner<V> {
    by_id: HashMap<String, V>,
    /// Ids, oldest first.
    order: VecDeque<String>,
}

impl<V> Default for Newest<V> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                by_id: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }
}

impl<V> Newest<V> {
    fn inner(&self) -> MutexGuard<'_, Inner<V>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What `read` makes of the value under `id`, if it is kept.
    pub fn read<T>(&self, id: &str, read: impl FnOnce(&V) -> T) -> Option<T> {
        self.inner().by_id.get(id).map(read)
    }

    /// Keeps `value` under `id`, forgetting the oldest past [`KEPT`].
    pub fn insert(&self, id: String, value: V) {
        let mut inner = self.inner();
        if inner.by_id.insert(id.clone(), value).is_none() {
            inner.order.push_back(id);
        }
        while inner.order.len() > KEPT {
            if let Some(oldest) = inner.order.pop_front() {
                inner.by_id.remove(&oldest);
            }
        }
    }

    /// Changes the value under `id`; false when it is not kept.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut V)) -> bool {
        self.inner().by_id.get_mut(id).map(change).is_some()
    }

    /// Forgets `id`; false when it was not kept.
    pub fn remove(&self, id: &str) -> bool {
        let mut inner = self.inner();
        let removed = inner.by_id.remove(id).is_some();
        if removed {
            inner.order.retain(|kept| kept != id);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_go_first_and_removed_ones_are_gone() {
        let kept = Newest::default();
        for n in 0..=KEPT {
            kept.insert(format!("id_{n}"), n);
        }
        assert_eq!(kept.read("id_0", |n| *n), None);
        assert_eq!(kept.read("id_1", |n| *n), Some(1));
        assert!(kept.update("id_1", |n| *n = 10));
        assert_eq!(kept.read("id_1", |n| *n), Some(10));
        assert!(kept.remove("id_1"));
        assert!(!kept.remove("id_1"));
        assert!(!kept.update("id_1", |_| {}));
        // Inserted again under an id it holds, a value does not count twice.
        kept.insert("id_2".into(), 20);
        kept.insert(format!("id_{}", KEPT + 1), 0);
        assert_eq!(kept.read("id_2", |n| *n), Some(20));
    }
}
