//! Conversations with their secondary indexes and tallies. Every change to
//! a conversation goes through [`SledStore::edit_conversation`] (or a
//! sibling), which works out the index entries and tally deltas from the
//! record before and after, and writes them with the record in one sled
//! transaction: a crash leaves all of them or none.
//!
//! Index keys are `field␟value␟created_at␟id` (␟ = 0x1F, which no HTTP
//! header value or generated id holds), so one prefix range walks every
//! conversation with that value in creation order; `created_at` is RFC 3339
//! with seconds, fixed width, so it sorts as text.

use super::{LOCK_WAIT, SledStore, busy, decode, encode, io};
use crate::store::{
    ConversationPage, ConversationRecord, ConversationScan, ConversationSignals,
    ConversationTallies, FeedbackRecord, IndexField, InferenceRecord, NewTurn, StoreError,
};
use parking_lot::MutexGuard;
use sled::Transactional;
use std::collections::BTreeSet;

const SEP: u8 = 0x1f;
/// The index of normalised text hashes, for finding duplicates.
const TEXT: &str = "text";
const TALLIES: &[u8] = b"conversation_tallies";
/// Present once the indexes and tallies cover every conversation; a store
/// written before they existed gets them built once, at open.
const VIEWS_BUILT: &[u8] = b"conversation_views_v1";

/// The trees one conversation change may touch, in transaction order.
#[derive(Clone, Copy)]
pub(super) enum Tree {
    Conversations,
    Index,
    Meta,
    Feedback,
    Idempotency,
    Inferences,
    ByCompletion,
    Experiment,
    Shadows,
}

/// Writes that go into the same transaction as a conversation change.
#[derive(Default)]
pub(super) struct Changes {
    puts: Vec<(Tree, Vec<u8>, Vec<u8>)>,
    removes: Vec<(Tree, Vec<u8>)>,
}

impl Changes {
    pub(super) fn put(&mut self, tree: Tree, key: &[u8], value: Vec<u8>) {
        self.puts.push((tree, key.to_vec(), value));
    }

    fn remove(&mut self, tree: Tree, key: &[u8]) {
        self.removes.push((tree, key.to_vec()));
    }
}

impl IndexField {
    fn name(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::ThreatType => "threat_type",
            Self::Severity => "severity",
            Self::Alias => "alias",
            Self::Version => "version",
            Self::User => "user",
        }
    }
}

fn prefix(field: &str, value: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(field.len() + value.len() + 2);
    key.extend_from_slice(field.as_bytes());
    key.push(SEP);
    key.extend_from_slice(value.as_bytes());
    key.push(SEP);
    key
}

fn sort_key(c: &ConversationRecord) -> Vec<u8> {
    let mut key = c.created_at.as_bytes().to_vec();
    key.push(SEP);
    key.extend_from_slice(c.id.as_bytes());
    key
}

/// Every index entry a conversation has; `all` lists every conversation.
fn index_keys(c: &ConversationRecord) -> BTreeSet<Vec<u8>> {
    let r = &c.review;
    let fields = [
        ("all", Some("")),
        (IndexField::Status.name(), Some(r.status.as_str())),
        (IndexField::ThreatType.name(), r.threat_type.as_deref()),
        (IndexField::Severity.name(), r.severity.as_deref()),
        (IndexField::Alias.name(), c.alias.as_deref()),
        (IndexField::User.name(), c.user.as_deref()),
        // The first conversation stored with a text owns its entry; later
        // copies point at it (`duplicate_of`) and own none.
        (
            TEXT,
            c.signals
                .text_hash
                .as_deref()
                .filter(|_| c.signals.duplicate_of.is_none()),
        ),
    ];
    let versions = c
        .versions
        .iter()
        .map(|v| (IndexField::Version.name(), Some(v.as_str())));
    let sort = sort_key(c);
    fields
        .into_iter()
        .chain(versions)
        .filter_map(|(field, value)| {
            let mut key = prefix(field, value?);
            key.extend_from_slice(&sort);
            Some(key)
        })
        .collect()
}

impl SledStore {
    /// Builds the indexes and tallies for a store written before they
    /// existed, once.
    pub(super) fn with_conversation_views(self) -> Result<Self, StoreError> {
        if self.meta.contains_key(VIEWS_BUILT).map_err(io)? {
            return Ok(self);
        }
        let mut tallies = ConversationTallies::default();
        for value in self.conversations.iter().values() {
            let c: ConversationRecord = decode("conversation", &value.map_err(io)?)?;
            tallies.count(&c, 1);
            for key in index_keys(&c) {
                self.conversation_index
                    .insert(key, c.id.as_bytes())
                    .map_err(io)?;
            }
        }
        self.meta.insert(TALLIES, encode(&tallies)?).map_err(io)?;
        self.meta.insert(VIEWS_BUILT, b"1".to_vec()).map_err(io)?;
        self.db.flush().map_err(io)?;
        Ok(self)
    }

    pub(super) fn read_tallies(&self) -> Result<ConversationTallies, StoreError> {
        self.meta.get(TALLIES).map_err(io)?.map_or_else(
            || Ok(ConversationTallies::default()),
            |v| decode("tallies", &v),
        )
    }

    /// The tallies as last committed, from memory once read.
    pub(super) fn current_tallies(&self) -> Result<ConversationTallies, StoreError> {
        let mut held = self.lock()?;
        if let Some(t) = held.as_ref() {
            return Ok(t.clone());
        }
        let t = self.read_tallies()?;
        *held = Some(t.clone());
        Ok(t)
    }

    /// Waits for the lock at most [`LOCK_WAIT`]: a store stuck on a
    /// failing disk gives an error, not a thread that waits for ever.
    fn lock(&self) -> Result<MutexGuard<'_, Option<ConversationTallies>>, StoreError> {
        self.conversation_lock
            .try_lock_for(LOCK_WAIT)
            .ok_or_else(|| busy("conversations"))
    }

    pub(super) fn append_turn_to_conversation(
        &self,
        turn: &NewTurn<'_>,
    ) -> Result<usize, StoreError> {
        let mut held = self.lock()?;
        let before = self.conversation_record(turn.conversation_id)?;
        // A batch retried after a failed flush threads its turns again.
        if let Some(index) = before.as_ref().and_then(|c| {
            c.inference_ids
                .iter()
                .position(|id| id == turn.inference_id)
        }) {
            return Ok(index);
        }
        let mut after = before.clone().unwrap_or_else(|| ConversationRecord {
            id: turn.conversation_id.to_string(),
            inference_ids: Vec::new(),
            parent_id: turn.parent_id.map(String::from),
            created_at: turn.at.to_string(),
            updated_at: turn.at.to_string(),
            alias: None,
            versions: Vec::new(),
            user: None,
            preview: turn.preview.to_string(),
            fine_tuned_turns: 0,
            review: Default::default(),
            signals: ConversationSignals::default(),
        });
        after.inference_ids.push(turn.inference_id.to_string());
        after.updated_at = turn.at.to_string();
        if after.alias.is_none() {
            after.alias = turn.alias.map(String::from);
        }
        if after.user.is_none() {
            after.user = turn.user.map(String::from);
        }
        if let Some(v) = turn
            .version
            .filter(|v| !after.versions.iter().any(|x| x == v))
        {
            after.versions.push(v.to_string());
        }
        after.fine_tuned_turns += u32::from(turn.fine_tuned);
        let upstream_error = after.signals.upstream_error || turn.signals.upstream_error;
        after.signals = ConversationSignals {
            upstream_error,
            duplicate_of: self.text_owner(&after.id, turn.signals.text_hash.as_deref())?,
            ..turn.signals.clone()
        };
        self.commit(&mut held, before.as_ref(), Some(&after), Changes::default())?;
        Ok(after.inference_ids.len() - 1)
    }

    /// The other conversation that owns `hash` in the text index, if any.
    /// The caller holds the lock, so no owner can appear meanwhile.
    fn text_owner(&self, id: &str, hash: Option<&str>) -> Result<Option<String>, StoreError> {
        let Some(hash) = hash else {
            return Ok(None);
        };
        let first = self
            .conversation_index
            .scan_prefix(prefix(TEXT, hash))
            .next();
        let owner = first
            .transpose()
            .map_err(io)?
            .map(|(_, v)| String::from_utf8_lossy(&v).into_owned());
        Ok(owner.filter(|o| o != id))
    }

    /// Applies `edit` to the conversation and writes it with `changes`; the
    /// changes are written even when the conversation does not exist (e.g.
    /// feedback on a turn whose conversation was deleted meanwhile).
    pub(super) fn edit_conversation(
        &self,
        id: &str,
        edit: &mut dyn FnMut(&mut ConversationRecord),
        changes: Changes,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        let mut held = self.lock()?;
        let before = self.conversation_record(id)?;
        let after = before.clone().map(|mut c| {
            edit(&mut c);
            c
        });
        self.commit(&mut held, before.as_ref(), after.as_ref(), changes)?;
        Ok(after)
    }

    pub(super) fn delete_inference_in_conversation(
        &self,
        record: &InferenceRecord,
        forget: &mut dyn FnMut(&mut ConversationRecord, &[FeedbackRecord]),
    ) -> Result<(), StoreError> {
        let mut held = self.lock()?;
        let mut changes = Changes::default();
        let feedback = self.remove_inference(record, &mut changes)?;
        let before = self.conversation_record(&record.conversation_id)?;
        let after = before.clone().and_then(|mut c| {
            c.inference_ids.retain(|id| *id != record.id);
            forget(&mut c, &feedback);
            (!c.inference_ids.is_empty()).then_some(c)
        });
        self.commit(&mut held, before.as_ref(), after.as_ref(), changes)
    }

    pub(super) fn delete_whole_conversation(
        &self,
        id: &str,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        let mut held = self.lock()?;
        let Some(before) = self.conversation_record(id)? else {
            return Ok(None);
        };
        let mut changes = Changes::default();
        // A turn lost in a crash before its batch was written has nothing
        // left to remove.
        for inference_id in &before.inference_ids {
            if let Some(bytes) = self.inferences.get(inference_id.as_bytes()).map_err(io)? {
                let record: InferenceRecord = decode("inference", &bytes)?;
                self.remove_inference(&record, &mut changes)?;
            }
        }
        self.commit(&mut held, Some(&before), None, changes)?;
        Ok(Some(before))
    }

    /// Queues the removal of an inference, its completion-id entry and its
    /// feedback; returns the feedback that goes.
    fn remove_inference(
        &self,
        record: &InferenceRecord,
        changes: &mut Changes,
    ) -> Result<Vec<FeedbackRecord>, StoreError> {
        let mut feedback = Vec::new();
        for kv in self
            .feedback
            .scan_prefix(format!("{}/", record.id).as_bytes())
        {
            let (key, value) = kv.map_err(io)?;
            feedback.push(decode("feedback", &value)?);
            changes.remove(Tree::Feedback, &key);
        }
        if let Some(c) = &record.completion_id {
            changes.remove(Tree::ByCompletion, c.as_bytes());
        }
        // The shadow versions' answers to it go with it.
        let prefix = format!("{}/", record.id);
        for key in self.shadows.scan_prefix(prefix.as_bytes()).keys() {
            let key = key.map_err(io)?;
            changes.remove(Tree::Inferences, &key[prefix.len()..]);
            changes.remove(Tree::Shadows, &key);
        }
        changes.remove(Tree::Inferences, record.id.as_bytes());
        Ok(feedback)
    }

    fn conversation_record(&self, id: &str) -> Result<Option<ConversationRecord>, StoreError> {
        self.conversations
            .get(id.as_bytes())
            .map_err(io)?
            .map(|v| decode("conversation", &v))
            .transpose()
    }

    /// Writes the conversation's new state, its index and tally deltas and
    /// `changes` in one transaction. The caller holds the lock, so nothing
    /// read before it moved since.
    fn commit(
        &self,
        cached: &mut Option<ConversationTallies>,
        before: Option<&ConversationRecord>,
        after: Option<&ConversationRecord>,
        mut changes: Changes,
    ) -> Result<(), StoreError> {
        let id = after.or(before).map(|c| c.id.clone());
        let mut committed = None;
        if let Some(id) = &id {
            let mut tallies = match cached.take() {
                Some(t) => t,
                None => self.read_tallies()?,
            };
            let old_keys = before.map(index_keys).unwrap_or_default();
            let new_keys = after.map(index_keys).unwrap_or_default();
            if let Some(c) = before {
                tallies.count(c, -1);
            }
            if let Some(c) = after {
                tallies.count(c, 1);
            }
            for key in old_keys.difference(&new_keys) {
                changes.remove(Tree::Index, key);
            }
            for key in new_keys.difference(&old_keys) {
                changes.put(Tree::Index, key, id.as_bytes().to_vec());
            }
            match after {
                Some(c) => changes.put(Tree::Conversations, id.as_bytes(), encode(c)?),
                None => changes.remove(Tree::Conversations, id.as_bytes()),
            }
            changes.put(Tree::Meta, TALLIES, encode(&tallies)?);
            committed = Some(tallies);
        }
        let trees = [
            &self.conversations,
            &self.conversation_index,
            &self.meta,
            &self.feedback,
            &self.idempotency,
            &self.inferences,
            &self.by_completion,
            &self.experiment,
            &self.shadows,
        ];
        trees[..]
            .transaction(|tx| {
                for (tree, key, value) in &changes.puts {
                    tx[*tree as usize].insert(key.as_slice(), value.as_slice())?;
                }
                for (tree, key) in &changes.removes {
                    tx[*tree as usize].remove(key.as_slice())?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StoreError::Io(format!("conversation transaction failed: {e:?}")))?;
        if committed.is_some() {
            *cached = committed;
        }
        Ok(())
    }

    pub(super) fn walk_conversations(
        &self,
        scan: &ConversationScan,
        keep: &dyn Fn(&ConversationRecord) -> bool,
    ) -> Result<ConversationPage, StoreError> {
        let head = match &scan.index {
            Some((field, value)) => prefix(field.name(), value),
            None => prefix("all", ""),
        };
        let with_head = |tail: &[u8]| [head.as_slice(), tail].concat();
        let lower = with_head(scan.since.as_deref().unwrap_or("").as_bytes());
        let mut upper = head.clone();
        // One past the separator: just after every key with this head.
        if let Some(last) = upper.last_mut() {
            *last += 1;
        }
        if let Some(until) = &scan.until {
            upper = upper.min(with_head(until.as_bytes()));
        }
        if let Some(cursor) = &scan.cursor {
            let at = hex::decode(cursor).map_err(|_| StoreError::NotFound)?;
            upper = upper.min(with_head(&at));
        }
        let mut page = ConversationPage::default();
        if lower >= upper {
            return Ok(page);
        }
        let mut entries = self.conversation_index.range(lower..upper).rev().peekable();
        let mut looked_at = 0;
        while let Some(entry) = entries.next() {
            let (key, id) = entry.map_err(io)?;
            looked_at += 1;
            let sort = &key[head.len()..];
            let mut indexed = true;
            for (field, value) in &scan.also {
                let mut other = prefix(field.name(), value);
                other.extend_from_slice(sort);
                if !self.conversation_index.contains_key(other).map_err(io)? {
                    indexed = false;
                    break;
                }
            }
            let found = if indexed {
                self.conversation_record(&String::from_utf8_lossy(&id))?
            } else {
                None
            };
            if let Some(c) = found.filter(|c| keep(c)) {
                page.data.push(c);
            }
            let full = page.data.len() >= scan.limit || looked_at >= scan.budget;
            if full {
                if entries.peek().is_some() {
                    page.next_cursor = Some(hex::encode(sort));
                }
                break;
            }
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ReviewStatus, Store};

    fn turn<'a>(conversation: &'a str, inference: &'a str, at: &'a str) -> NewTurn<'a> {
        NewTurn {
            conversation_id: conversation,
            inference_id: inference,
            at,
            alias: Some("triage"),
            version: Some(if inference.ends_with('0') {
                "base"
            } else {
                "large"
            }),
            user: Some(if conversation.ends_with('1') {
                "ana"
            } else {
                "bob"
            }),
            preview: "alert",
            ..Default::default()
        }
    }

    fn recount(store: &SledStore) -> ConversationTallies {
        let mut t = ConversationTallies::default();
        store
            .for_each_conversation(&mut |c| {
                t.count(&c, 1);
                Ok(())
            })
            .unwrap();
        t
    }

    fn all_ids(store: &SledStore, scan: ConversationScan) -> Vec<String> {
        let mut ids = Vec::new();
        let mut scan = ConversationScan {
            limit: 3,
            budget: 7,
            ..scan
        };
        loop {
            let page = store.list_conversations(&scan, &|_| true).unwrap();
            ids.extend(page.data.into_iter().map(|c| c.id));
            match page.next_cursor {
                Some(c) => scan.cursor = Some(c),
                None => return ids,
            }
        }
    }

    #[test]
    fn indexes_and_tallies_follow_every_change_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for n in 0..20 {
            let conv = format!("conv_{n:02}");
            let at = format!("2026-01-01T00:00:{n:02}Z");
            for t in 0..(n % 3 + 1) {
                store
                    .append_turn(&turn(&conv, &format!("inf_{n:02}{t}"), &at))
                    .unwrap();
            }
        }
        for n in (0..20).step_by(4) {
            store
                .update_conversation(&format!("conv_{n:02}"), &mut |c| {
                    c.review.status = ReviewStatus::Approved;
                    c.review.threat_type = Some("malware".into());
                    c.review.quality_score = Some(4);
                })
                .unwrap();
        }
        store
            .update_conversation("conv_04", &mut |c| {
                c.review.threat_type = Some("phishing".into())
            })
            .unwrap();
        assert!(store.delete_conversation("conv_08").unwrap().is_some());
        assert!(store.delete_conversation("conv_08").unwrap().is_none());
        let tallies = store.tallies().unwrap();
        assert_eq!(tallies, recount(&store));
        assert_eq!((tallies.conversations, tallies.approved), (19, 4));
        assert_eq!(tallies.by_threat_type["malware"], 3);

        let every = all_ids(&store, ConversationScan::default());
        let expected: Vec<String> = (0..20)
            .rev()
            .filter(|n| *n != 8)
            .map(|n| format!("conv_{n:02}"))
            .collect();
        assert_eq!(every, expected, "newest first, across pages");
        let approved = all_ids(
            &store,
            ConversationScan {
                index: Some((IndexField::Status, "approved".into())),
                ..Default::default()
            },
        );
        assert_eq!(approved, ["conv_16", "conv_12", "conv_04", "conv_00"]);
        let approved_malware = all_ids(
            &store,
            ConversationScan {
                index: Some((IndexField::Status, "approved".into())),
                also: vec![(IndexField::ThreatType, "malware".into())],
                ..Default::default()
            },
        );
        assert_eq!(approved_malware, ["conv_16", "conv_12", "conv_00"]);
        let window = all_ids(
            &store,
            ConversationScan {
                index: Some((IndexField::User, "bob".into())),
                since: Some("2026-01-01T00:00:05Z".into()),
                until: Some("2026-01-01T00:00:10Z".into()),
                ..Default::default()
            },
        );
        assert_eq!(window, ["conv_09", "conv_07", "conv_06", "conv_05"]);
        drop(store);

        let store = crate::store::sled_store::tests::reopen(dir.path());
        assert_eq!(store.tallies().unwrap(), tallies);
        assert_eq!(all_ids(&store, ConversationScan::default()), expected);
    }

    #[test]
    fn a_store_from_before_the_indexes_gets_them_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sled_store::tests::reopen(dir.path());
        for n in 0..5 {
            let conv = format!("conv_{n}");
            store
                .append_turn(&turn(&conv, &format!("inf_{n}0"), "2026-01-01T00:00:00Z"))
                .unwrap();
        }
        let tallies = store.tallies().unwrap();
        store.meta.clear().unwrap();
        store.conversation_index.clear().unwrap();
        drop(store);
        let store = crate::store::sled_store::tests::reopen(dir.path());
        assert_eq!(store.tallies().unwrap(), tallies);
        assert_eq!(all_ids(&store, ConversationScan::default()).len(), 5);
    }

    #[test]
    fn the_first_conversation_with_a_text_owns_it_until_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let with_hash = |conv: &'static str, inference: &'static str, hash: &str, failed: bool| {
            let signals = ConversationSignals {
                complete_answer: !failed,
                answer_chars: 40,
                upstream_error: failed,
                text_hash: Some(hash.to_string()),
                duplicate_of: None,
            };
            store
                .append_turn(&NewTurn {
                    signals,
                    ..turn(conv, inference, "2026-01-01T00:00:00Z")
                })
                .unwrap();
            store.conversation(conv).unwrap().unwrap().signals
        };
        assert_eq!(
            with_hash("conv_1", "inf_10", "aa", false).duplicate_of,
            None
        );
        let copy = with_hash("conv_2", "inf_20", "aa", true);
        assert_eq!(copy.duplicate_of.as_deref(), Some("conv_1"));
        assert!(copy.upstream_error && !copy.complete_answer);
        // A later turn moves conv_2 to a text of its own; the failure stays.
        let moved = with_hash("conv_2", "inf_21", "bb", false);
        assert_eq!(moved.duplicate_of, None);
        assert!(moved.upstream_error && moved.complete_answer);
        assert_eq!(
            with_hash("conv_3", "inf_30", "bb", false)
                .duplicate_of
                .as_deref(),
            Some("conv_2")
        );
        // Once the owner is deleted, the next copy owns the text.
        store.delete_conversation("conv_1").unwrap();
        assert_eq!(
            with_hash("conv_4", "inf_40", "aa", false).duplicate_of,
            None
        );
        assert_eq!(
            with_hash("conv_5", "inf_50", "aa", false)
                .duplicate_of
                .as_deref(),
            Some("conv_4")
        );
    }
}
