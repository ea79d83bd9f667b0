//! Conversations with their listings and tallies. Every change to a
//! conversation goes through [`SledStore::commit`], which works out the
//! listing entries and tally deltas from the record before and after and
//! writes them with the record in one sled transaction: a crash leaves all
//! of them or none.

use super::groups;
use super::owners::TextOwners;
use super::postings::{self, Entry, Posting};
use super::{LOCK_WAIT, SledStore, busy, codec, decode, encode, io};
use crate::store::{
    ConversationPage, ConversationRecord, ConversationScan, ConversationSignals,
    ConversationTallies, FeedbackRecord, InferenceRecord, Opening, Position, StoreError, TurnHead,
    preview_of,
};
use parking_lot::MutexGuard;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use std::collections::HashSet;

pub(super) const TALLIES: &[u8] = b"conversation_tallies";

/// What the conversation lock keeps besides the right to change them.
#[derive(Default)]
pub(super) struct Held {
    /// The tallies as last committed, once read.
    tallies: Option<ConversationTallies>,
    pub(super) owners: TextOwners,
    /// The greatest ULID of any record stored (see `groups`), set at open.
    pub(super) stored_through: Option<groups::Ulid>,
}

/// The trees a conversation change may touch, in transaction order.
#[derive(Clone, Copy)]
pub(super) enum Tree {
    Conversations,
    Slots,
    Postings,
    Meta,
    Feedback,
    Idempotency,
    Inferences,
    Experiment,
    Shadows,
    RunLog,
}

/// Writes that go into the same transaction as a conversation change.
#[derive(Default)]
pub(super) struct Changes {
    puts: Vec<(Tree, Vec<u8>, Vec<u8>)>,
    removes: Vec<(Tree, Vec<u8>)>,
    /// Listing entries added (`true`) or removed, by block.
    listings: Vec<(Vec<u8>, Entry, bool)>,
    /// Slots of new conversations whose listings a capture batch writes
    /// as whole blocks. Sets: every conversation of a batch asks, and a
    /// list scanned each time cost the writer time quadratic in the batch.
    listed: HashSet<Vec<u8>>,
    /// Slots of new conversations kept as their first turn's record alone.
    embedded: HashSet<Vec<u8>>,
    /// Inference records removed, alone or from their groups.
    removed_records: Vec<Vec<u8>>,
}

impl Changes {
    pub(super) fn put(&mut self, tree: Tree, key: &[u8], value: Vec<u8>) {
        self.puts.push((tree, key.to_vec(), value));
    }

    pub(super) fn remove(&mut self, tree: Tree, key: &[u8]) {
        self.removes.push((tree, key.to_vec()));
    }

    /// Removes an inference record, wherever it is stored (see `groups`).
    pub(super) fn remove_record(&mut self, key: Vec<u8>) {
        self.removed_records.push(key);
    }

    pub(super) fn take_removed_records(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.removed_records)
    }

    fn listing(&mut self, posting: &Posting, position: Position, entry: Entry, add: bool) {
        self.listings
            .push((postings::block_key(posting, position.0), entry, add));
    }

    /// The listing changes between a conversation's two states (none for
    /// one whose listings the capture batch writes whole).
    pub(super) fn relist(
        &mut self,
        before: Option<&ConversationRecord>,
        after: Option<&ConversationRecord>,
        slot: &[u8],
    ) {
        let Some(current) = after.or(before) else {
            return;
        };
        let Some(position) = current.position else {
            return;
        };
        if self.listed.contains(slot) {
            return;
        }
        let old = before.map(postings::postings).unwrap_or_default();
        let new = after.map(postings::postings).unwrap_or_default();
        let entry = Entry::new(position, postings::created_ms(current, slot), slot);
        for p in old.difference(&new) {
            self.listing(p, position, entry.clone(), false);
        }
        for p in new.difference(&old) {
            self.listing(p, position, entry.clone(), true);
        }
    }

    /// Marks a conversation whose listing blocks are written whole.
    pub(super) fn listed_whole(&mut self, slot: &[u8]) {
        self.listed.insert(slot.to_vec());
    }

    /// Marks a new conversation its first turn's record stands for.
    pub(super) fn embedded(&mut self, slot: &[u8]) {
        self.embedded.insert(slot.to_vec());
    }
}

impl SledStore {
    pub(super) fn read_tallies(&self) -> Result<ConversationTallies, StoreError> {
        self.meta.get(TALLIES).map_err(io)?.map_or_else(
            || Ok(ConversationTallies::default()),
            |v| decode("tallies", &v),
        )
    }

    /// The tallies as last committed, from memory once read.
    pub(super) fn current_tallies(&self) -> Result<ConversationTallies, StoreError> {
        let mut held = self.lock()?;
        if let Some(t) = held.tallies.as_ref() {
            return Ok(t.clone());
        }
        let t = self.read_tallies()?;
        held.tallies = Some(t.clone());
        Ok(t)
    }

    /// Waits for the lock at most [`LOCK_WAIT`]: a store stuck on a
    /// failing disk gives an error, not a thread that waits for ever.
    pub(super) fn lock(&self) -> Result<MutexGuard<'_, Held>, StoreError> {
        self.conversation_lock
            .try_lock_for(LOCK_WAIT)
            .ok_or_else(|| busy("conversations"))
    }

    /// Where a conversation's record is kept: its own ULID for a generated
    /// id, else the slot its first turn gave it.
    pub(super) fn slot_of(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(ulid) = codec::ulid_of(id) {
            return Ok(Some(codec::ulid_key(ulid)));
        }
        Ok(self
            .slots
            .get(id.as_bytes())
            .map_err(io)?
            .map(|v| v.to_vec()))
    }

    pub(super) fn conversation_record(
        &self,
        id: &str,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        let Some(slot) = self.slot_of(id)? else {
            return Ok(None);
        };
        self.conversation_at(&slot)
    }

    /// The conversation at a slot: its record, or — for a conversation of
    /// one unreviewed turn — what its first turn's record (kept under the
    /// same key) says of it.
    pub(super) fn conversation_at(
        &self,
        slot: &[u8],
    ) -> Result<Option<ConversationRecord>, StoreError> {
        if let Some(conversation) = self.conversation_record_at(slot)? {
            return Ok(Some(conversation));
        }
        let Some(v) = self.record_bytes(slot)? else {
            return Ok(None);
        };
        let turn: FirstTurn = codec::decode("inference", &v)?;
        Ok(turn.conversation())
    }

    /// The conversation record at a slot, when one is written: not what a
    /// first turn kept under the same key says.
    pub(super) fn conversation_record_at(
        &self,
        slot: &[u8],
    ) -> Result<Option<ConversationRecord>, StoreError> {
        self.conversations
            .get(slot)
            .map_err(io)?
            .map(|v| codec::decode("conversation", &v))
            .transpose()
    }

    /// The id and signals of the conversation at a slot, without decoding
    /// a first turn's request and answer: what the duplicate check of
    /// every captured turn needs, read at the cost of skipping them.
    pub(super) fn signals_at(
        &self,
        slot: &[u8],
    ) -> Result<Option<(String, ConversationSignals)>, StoreError> {
        if let Some(v) = self.conversations.get(slot).map_err(io)? {
            let c: ConversationRecord = codec::decode("conversation", &v)?;
            return Ok(Some((c.id, c.signals)));
        }
        let Some(v) = self.record_bytes(slot)? else {
            return Ok(None);
        };
        let turn: Opened = codec::decode("inference", &v)?;
        Ok(turn.opens.map(|o| (turn.conversation_id, o.signals)))
    }

    pub(super) fn inference_at(&self, key: &[u8]) -> Result<Option<InferenceRecord>, StoreError> {
        self.record_bytes(key)?
            .map(|v| codec::decode("inference", &v))
            .transpose()
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
        let slot = self.slot_of(id)?;
        let before = match &slot {
            Some(slot) => self.conversation_at(slot)?,
            None => None,
        };
        let after = before.clone().map(|mut c| {
            edit(&mut c);
            c
        });
        let slot = slot.unwrap_or_default();
        self.commit(
            &mut held,
            &[(slot, before.as_ref(), after.as_ref())],
            changes,
        )?;
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
        let slot = self.slot_of(&record.conversation_id)?.unwrap_or_default();
        let before = self.conversation_at(&slot)?;
        let after = before.clone().and_then(|mut c| {
            c.inference_ids.retain(|id| *id != record.id);
            forget(&mut c, &feedback);
            (!c.inference_ids.is_empty()).then_some(c)
        });
        if after.is_none() && codec::ulid_of(&record.conversation_id).is_none() {
            changes.remove(Tree::Slots, record.conversation_id.as_bytes());
        }
        self.commit(
            &mut held,
            &[(slot, before.as_ref(), after.as_ref())],
            changes,
        )
    }

    pub(super) fn delete_whole_conversation(
        &self,
        id: &str,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        let mut held = self.lock()?;
        let Some(slot) = self.slot_of(id)? else {
            return Ok(None);
        };
        let Some(before) = self.conversation_at(&slot)? else {
            return Ok(None);
        };
        let mut changes = Changes::default();
        // A turn lost in a crash before its batch was written has nothing
        // left to remove.
        for inference_id in &before.inference_ids {
            if let Some(record) = self.inference(inference_id)? {
                self.remove_inference(&record, &mut changes)?;
            }
        }
        if codec::ulid_of(id).is_none() {
            changes.remove(Tree::Slots, id.as_bytes());
        }
        self.commit(&mut held, &[(slot, Some(&before), None)], changes)?;
        Ok(Some(before))
    }

    fn inference(&self, id: &str) -> Result<Option<InferenceRecord>, StoreError> {
        self.inference_at(&codec::id_key(id))
    }

    /// Queues the removal of an inference and its feedback (and of its
    /// shadows' answers); returns the feedback that goes. Its lookups by
    /// history key or completion id find nothing once it is gone.
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
        let prefix = format!("{}/", record.id);
        for key in self.shadows.scan_prefix(prefix.as_bytes()).keys() {
            let key = key.map_err(io)?;
            let shadow = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            changes.remove_record(codec::id_key(&shadow));
            changes.remove(Tree::Shadows, &key);
        }
        changes.remove_record(codec::id_key(&record.id));
        Ok(feedback)
    }

    /// Writes the conversations' new states (`(slot, before, after)`),
    /// their listing and tally deltas and `changes` in one transaction.
    /// The caller holds the lock, so nothing read before it moved since.
    pub(super) fn commit(
        &self,
        held: &mut Held,
        conversations: &[(
            Vec<u8>,
            Option<&ConversationRecord>,
            Option<&ConversationRecord>,
        )],
        mut changes: Changes,
    ) -> Result<(), StoreError> {
        let mut tallies = match held.tallies.take() {
            Some(t) => t,
            None => self.read_tallies()?,
        };
        let mut touched = false;
        for (slot, before, after) in conversations {
            if before.is_none() && after.is_none() {
                continue;
            }
            touched = true;
            if let Some(c) = before {
                tallies.count(c, -1);
            }
            if let Some(c) = after {
                tallies.count(c, 1);
            }
            changes.relist(*before, *after, slot);
            match after {
                Some(_) if changes.embedded.contains(slot) => {}
                Some(c) => changes.put(Tree::Conversations, slot, codec::encode(c)?),
                None => changes.remove(Tree::Conversations, slot),
            }
        }
        if touched {
            changes.put(Tree::Meta, TALLIES, encode(&tallies)?);
        }
        self.resolve_removed_records(&mut changes)?;
        let result = self.apply(&changes);
        // The cached tallies are those last committed: on failure, read
        // them again next time.
        if result.is_ok() {
            held.owners.committed(conversations);
            held.tallies = Some(tallies);
        }
        result
    }

    fn apply(&self, changes: &Changes) -> Result<(), StoreError> {
        let trees = [
            &self.conversations,
            &self.slots,
            &self.postings,
            &self.meta,
            &self.feedback,
            &self.idempotency,
            &self.inferences,
            &self.experiment,
            &self.shadows,
            self.runs.log_tree(),
        ];
        trees[..]
            .transaction(|tx| {
                for (tree, key, value) in &changes.puts {
                    tx[*tree as usize].insert(key.as_slice(), value.as_slice())?;
                }
                for (tree, key) in &changes.removes {
                    tx[*tree as usize].remove(key.as_slice())?;
                }
                let postings = &tx[Tree::Postings as usize];
                for (block, entry, add) in &changes.listings {
                    edit_listing(postings, block, entry, *add)?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StoreError::Io(format!("conversation transaction failed: {e:?}")))
    }

    pub(super) fn walk_conversations(
        &self,
        scan: &ConversationScan,
        keep: &dyn Fn(&ConversationRecord) -> bool,
    ) -> Result<ConversationPage, StoreError> {
        let posting = match &scan.index {
            Some((field, value)) => (postings::field_byte(*field), value.clone()),
            None => postings::all(),
        };
        let head = postings::prefix(&posting);
        let since = scan.since.as_deref().map(millis).transpose()?;
        let until = scan.until.as_deref().map(millis).transpose()?;
        let cursor = match &scan.cursor {
            Some(c) => Some(postings::parse_cursor(c).ok_or(StoreError::NotFound)?),
            None => None,
        };
        // Blocks are read newest first, from the cursor's batch, or from
        // the last that can hold a conversation created before `until`: a
        // conversation is listed by the batch that stored its first turn,
        // at most one request's length after it was created.
        let mut upper = head.clone();
        match (cursor, until) {
            (Some(c), _) => upper.extend_from_slice(&(c.0 + 1).to_be_bytes()),
            (None, Some(u)) => upper.extend_from_slice(
                &postings::batch_at(u.saturating_add(LISTING_MARGIN_MS)).to_be_bytes(),
            ),
            (None, None) => upper.push(0xff),
        }
        let mut page = ConversationPage::default();
        let mut looked_at = 0;
        let mut last: Option<Position> = None;
        'blocks: for block in self.postings.range(head.clone()..upper).rev() {
            let (key, value) = block.map_err(io)?;
            let batch = postings::batch_of(&key);
            if since.is_some_and(|s| postings::batch_millis(batch) < s) {
                break;
            }
            for entry in postings::decode_block(&value).into_iter().rev() {
                let position = Position(batch, entry.index);
                if cursor.is_some_and(|c| position >= c) {
                    continue;
                }
                if since.is_some_and(|s| entry.created_ms < s)
                    || until.is_some_and(|u| entry.created_ms >= u)
                {
                    continue;
                }
                if page.data.len() >= scan.limit || looked_at >= scan.budget {
                    page.next_cursor = last.map(postings::cursor);
                    break 'blocks;
                }
                looked_at += 1;
                last = Some(position);
                if let Some(c) = self.conversation_at(&entry.slot)?.filter(|c| keep(c)) {
                    page.data.push(c);
                }
            }
        }
        Ok(page)
    }
}

/// How long after its creation a conversation may still be stored (its
/// first request's whole length): a listing bounded by `until` reads back
/// this far beyond it.
const LISTING_MARGIN_MS: u64 = 3_600_000;

fn millis(rfc3339: &str) -> Result<u64, StoreError> {
    humantime::parse_rfc3339(rfc3339)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .ok_or(StoreError::NotFound)
}

/// Adds or removes one listing entry, inside a transaction.
fn edit_listing(
    postings: &TransactionalTree,
    block: &[u8],
    entry: &Entry,
    add: bool,
) -> Result<(), ConflictableTransactionError<()>> {
    let current = postings.get(block)?;
    let edited = postings::edit_block(current.as_deref(), entry, add);
    if edited.is_empty() {
        postings.remove(block)?;
    } else {
        postings.insert(block, edited)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CapturedTurn, ConversationSignals, IndexField, ReviewStatus, Store};
    use std::time::{Duration, SystemTime};

    /// An RFC 3339 time `seconds` after a minute ago: the capture times a
    /// live store sees.
    /// An RFC 3339 time `seconds` after a minute before the first call:
    /// one base for the whole test, however slowly it runs.
    fn at(seconds: u64) -> String {
        static BASE: std::sync::LazyLock<SystemTime> =
            std::sync::LazyLock::new(|| SystemTime::now() - Duration::from_secs(60));
        humantime::format_rfc3339_seconds(*BASE + Duration::from_secs(seconds)).to_string()
    }

    fn turn(conversation: &str, inference: &str, at: &str) -> CapturedTurn {
        let mut record = InferenceRecord::bare(inference, conversation);
        record.created_at = at.into();
        record.alias = Some("triage".into());
        record.version = Some(
            if inference.ends_with('0') {
                "base"
            } else {
                "large"
            }
            .into(),
        );
        record.user = Some(
            if conversation.ends_with('1') {
                "ana"
            } else {
                "bob"
            }
            .into(),
        );
        let mut turn = CapturedTurn::plain(record);
        turn.preview = "alert".into();
        turn
    }

    fn capture(store: &SledStore, turns: Vec<CapturedTurn>) {
        let mut turns = turns;
        store.store_captured(&mut turns).unwrap();
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
    fn listings_and_tallies_follow_every_change_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for n in 0..20u64 {
            let conv = format!("conv_{n:02}");
            // Several turns of a conversation, in one batch or in several.
            let turns: Vec<CapturedTurn> = (0..(n % 3 + 1))
                .map(|t| turn(&conv, &format!("inf_{n:02}{t}"), &at(n)))
                .collect();
            if n % 2 == 0 {
                capture(&store, turns);
            } else {
                turns.into_iter().for_each(|t| capture(&store, vec![t]));
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
        assert_eq!(
            store
                .conversation("conv_05")
                .unwrap()
                .unwrap()
                .inference_ids
                .len(),
            3
        );

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
        let malware = all_ids(
            &store,
            ConversationScan {
                index: Some((IndexField::ThreatType, "malware".into())),
                ..Default::default()
            },
        );
        assert_eq!(malware, ["conv_16", "conv_12", "conv_00"]);
        let large = all_ids(
            &store,
            ConversationScan {
                index: Some((IndexField::Version, "large".into())),
                ..Default::default()
            },
        );
        assert_eq!(
            large.len(),
            12,
            "every conversation with a second turn but the deleted one: {large:?}"
        );
        let window = all_ids(
            &store,
            ConversationScan {
                index: Some((IndexField::User, "bob".into())),
                since: Some(at(5)),
                until: Some(at(10)),
                ..Default::default()
            },
        );
        assert_eq!(window, ["conv_09", "conv_07", "conv_06", "conv_05"]);
        drop(store);

        let store = crate::store::sled_store::tests::reopen(dir.path());
        assert_eq!(store.tallies().unwrap(), tallies);
        assert_eq!(all_ids(&store, ConversationScan::default()), expected);
        // Conversations go on in order after a reopen.
        capture(&store, vec![turn("conv_20", "inf_200", &at(20))]);
        assert_eq!(all_ids(&store, ConversationScan::default())[0], "conv_20");
    }

    #[test]
    fn a_retried_batch_counts_and_threads_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let conv = crate::ids::new_id("conv");
        let mut batch = vec![
            turn(&conv, &crate::ids::new_id("inf"), &at(0)),
            turn(&conv, &crate::ids::new_id("inf"), &at(1)),
        ];
        store.store_captured(&mut batch).unwrap();
        let before = store.tallies().unwrap();
        store.store_captured(&mut batch).unwrap();
        assert_eq!(store.tallies().unwrap(), before);
        let c = store.conversation(&conv).unwrap().unwrap();
        assert_eq!(c.inference_ids.len(), 2);
        assert_eq!(
            store.inference(&c.inference_ids[1]).unwrap().unwrap().turn,
            Some(1)
        );
    }

    #[test]
    fn follow_ups_and_completion_ids_find_their_inference() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let conv = crate::ids::new_id("conv");
        let inference = crate::ids::new_id("inf");
        let mut t = turn(&conv, &inference, &at(0));
        t.continuations = vec!["00112233445566778899aabbccddeeff".into()];
        t.record.sticky = Some("user:ana".into());
        t.record.completion_id = Some("chatcmpl-abc".into());
        capture(&store, vec![t]);
        let point = store
            .thread("00112233445566778899aabbccddeeff")
            .unwrap()
            .unwrap();
        assert_eq!(
            (point.conversation_id.as_str(), point.turn),
            (conv.as_str(), 0)
        );
        assert_eq!(point.sticky.as_deref(), Some("user:ana"));
        assert_eq!(
            store.thread("ffffffffffffffffffffffffffffffff").unwrap(),
            None
        );
        assert_eq!(store.thread("not hex").unwrap(), None);
        let found = store
            .inference_by_completion("chatcmpl-abc")
            .unwrap()
            .unwrap();
        assert_eq!(found.id, inference);
        assert_eq!(
            store.inference_by_completion("chatcmpl-other").unwrap(),
            None
        );
        store.delete_conversation(&conv).unwrap();
        assert_eq!(store.inference_by_completion("chatcmpl-abc").unwrap(), None);
        assert_eq!(
            store.thread("00112233445566778899aabbccddeeff").unwrap(),
            None
        );
    }

    #[test]
    fn the_first_conversation_with_a_text_owns_it_until_it_goes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let with_hash = |conv: &str, inference: &str, hash: &str, failed: bool| {
            let mut t = turn(conv, inference, &at(0));
            t.signals = ConversationSignals {
                complete_answer: !failed,
                answer_chars: 40,
                upstream_error: failed,
                text_hash: Some(hash.to_string()),
                duplicate_of: None,
                background_task: false,
            };
            capture(&store, vec![t]);
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
        // An owner whose later turn moves to another text owns it no more,
        // though the check remembered it a moment ago.
        with_hash("conv_4", "inf_41", "cc", false);
        assert_eq!(
            with_hash("conv_6", "inf_60", "aa", false).duplicate_of,
            None
        );
        assert_eq!(
            with_hash("conv_7", "inf_70", "aa", false)
                .duplicate_of
                .as_deref(),
            Some("conv_6")
        );
    }
}

/// The fields of an inference record that say what it opened.
#[derive(serde::Deserialize)]
struct Opened {
    conversation_id: String,
    #[serde(default)]
    opens: Option<Opening>,
}

/// A stored turn read as the conversation it opened: its head and the
/// request's messages, with the answer skipped unparsed — what listings
/// and follow-ups need, at a fraction of a whole record's cost.
#[derive(serde::Deserialize)]
struct FirstTurn {
    id: String,
    conversation_id: String,
    created_at: String,
    alias: Option<String>,
    version: Option<String>,
    user: Option<String>,
    provider_model: String,
    #[serde(default)]
    request: Option<Messages>,
    #[serde(default)]
    opens: Option<Opening>,
}

#[derive(serde::Deserialize)]
struct Messages {
    #[serde(default)]
    messages: serde_json::Value,
}

impl FirstTurn {
    /// The conversation it opened, while it is that conversation's only,
    /// unreviewed turn.
    fn conversation(self) -> Option<ConversationRecord> {
        let opening = self.opens.as_ref()?;
        let head = TurnHead {
            id: &self.id,
            conversation_id: &self.conversation_id,
            created_at: &self.created_at,
            alias: self.alias.as_deref(),
            version: self.version.as_deref(),
            user: self.user.as_deref(),
            provider_model: &self.provider_model,
        };
        let preview = self
            .request
            .as_ref()
            .map(|r| preview_of(&r.messages))
            .unwrap_or_default();
        Some(ConversationRecord::opened_by_head(&head, opening, preview))
    }
}
