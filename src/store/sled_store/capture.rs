//! A capture batch, stored in one transaction: every turn appended to its
//! conversation (new conversations get their slot, position and listing
//! blocks, one block per listed value for the whole batch), the records,
//! the versions' tallies, and the batch's lookup pairs — history key and
//! completion id to the inference, text hash to the conversation that
//! owns the text — logged for the runs.

use super::conversations::{Changes, Tree};
use super::owners::{Owner, TextOwners, owned_text};
use super::postings::{self, Entry, Posting};
use super::runs::{self, Kind, Runs};
use super::{SledStore, codec};
use crate::store::{
    CapturedTurn, ConversationRecord, ConversationSignals, Opening, Position, StoreError, TallyKey,
    VersionTally,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

/// A lookup key for any text: the first 16 bytes of its SHA-256.
pub fn hashed(text: &str) -> runs::Key {
    let digest = Sha256::digest(text.as_bytes());
    let mut key = [0u8; runs::KEY];
    key.copy_from_slice(&digest[..runs::KEY]);
    key
}

/// A continuation key (32 hex digits) as lookup key bytes.
pub fn thread_key(hex_key: &str) -> Option<runs::Key> {
    let mut key = [0u8; runs::KEY];
    hex::decode_to_slice(hex_key, &mut key).ok()?;
    Some(key)
}

/// A lookup value: a 17-byte store key.
fn value_of(key: &[u8]) -> Option<runs::Value> {
    key.try_into().ok()
}

/// The owners of the texts a batch has met so far.
#[derive(Default)]
struct BatchOwners {
    /// Text hash → the conversation that owns it.
    seen: HashMap<String, String>,
    /// The batch's conversations that became owners, remembered once the
    /// batch is written.
    new: Vec<(runs::Key, Owner)>,
}

/// A conversation this batch changes.
struct Touched {
    slot: Vec<u8>,
    before: Option<ConversationRecord>,
    after: ConversationRecord,
    /// For a conversation this batch opens: its first turn's place in the batch.
    opened_by: Option<usize>,
}

impl SledStore {
    pub(super) fn write_captured(&self, batch: &mut [CapturedTurn]) -> Result<(), StoreError> {
        // The tally lock first, as feedback takes them.
        let _tallies = self.lock_tallies()?;
        let mut held = self.lock()?;
        let mut fresh = Vec::with_capacity(batch.len());
        for (i, turn) in batch.iter().enumerate() {
            // A batch retried after a failed flush: what was stored stays.
            if !self.is_stored(&held, &codec::id_key(&turn.record.id))? {
                fresh.push(i);
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        let batch_id = self.next_batch();
        let mut touched: Vec<Touched> = Vec::new();
        let mut by_id: HashMap<String, usize> = HashMap::new();
        let mut owners = BatchOwners::default();
        let mut pairs: Vec<(Kind, runs::Key, runs::Value)> = Vec::new();
        let mut changes = Changes::default();
        let mut deltas: Vec<(TallyKey, VersionTally)> = Vec::new();
        for &i in &fresh {
            let turn = &mut batch[i];
            let key = codec::id_key(&turn.record.id);
            if let Some(live) = &turn.record.shadow_of {
                // A shadow's answer was never returned: no turn of anything.
                let index = format!("{live}/{}", turn.record.id);
                changes.put(Tree::Shadows, index.as_bytes(), Vec::new());
            } else {
                let at = match by_id.get(&turn.record.conversation_id) {
                    Some(at) => *at,
                    None => {
                        let loaded = self.load_or_create(turn, i)?;
                        touched.push(loaded);
                        by_id.insert(turn.record.conversation_id.clone(), touched.len() - 1);
                        touched.len() - 1
                    }
                };
                let conversation = &mut touched[at];
                let index = conversation.after.append(turn);
                turn.record.turn = Some(index);
                let duplicate = self.text_owner(
                    turn,
                    conversation,
                    &mut owners,
                    &mut held.owners,
                    &mut pairs,
                )?;
                conversation.after.signals = ConversationSignals {
                    upstream_error: conversation.after.signals.upstream_error
                        || turn.signals.upstream_error,
                    duplicate_of: duplicate,
                    ..turn.signals.clone()
                };
                if let Some(v) = value_of(&key) {
                    for k in turn.continuations.iter().filter_map(|c| thread_key(c)) {
                        pairs.push((Kind::Thread, k, v));
                    }
                }
            }
            if let (Some(completion), Some(v)) = (&turn.record.completion_id, value_of(&key)) {
                pairs.push((Kind::Completion, hashed(completion), v));
            }
            deltas.extend(turn.tally.clone());
        }
        self.list_new(batch_id, &mut touched, &mut changes);
        for t in &touched {
            embed(t, batch, &mut changes);
        }
        let records = fresh
            .iter()
            .map(|&i| {
                let turn = &batch[i];
                Ok((codec::id_key(&turn.record.id), codec::encode_turn(turn)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.place_records(&mut held, records, &mut changes);
        for (row, value) in self.merged_tallies(&deltas)? {
            changes.put(Tree::Experiment, &row, value);
        }
        let log = Runs::log_entries(batch_id, &pairs);
        for (k, v) in &log {
            changes.put(Tree::RunLog, k, v.clone());
        }
        let states: Vec<_> = touched
            .iter()
            .map(|t| (t.slot.clone(), t.before.as_ref(), Some(&t.after)))
            .collect();
        // The pairs are found before the batch is visible, so nothing read
        // from the batch can miss its lookups; a pair whose batch then
        // failed points at a record that is not there, which reads as none.
        self.runs.committed(&log, &pairs)?;
        self.commit(&mut held, &states, changes)?;
        for (key, owner) in owners.new {
            held.owners.remember(key, owner);
        }
        Ok(())
    }

    /// The conversation a fresh turn (the batch's `at`) goes to, as
    /// stored, or a new one (with its slot, remembered for a client-named
    /// id).
    fn load_or_create(&self, turn: &CapturedTurn, at: usize) -> Result<Touched, StoreError> {
        let id = &turn.record.conversation_id;
        let stored = match self.slot_of(id)? {
            // The fresh turn's own key holds no record yet, so a
            // conversation slotted there is kept as a conversation record
            // or not at all: one lookup, not two.
            Some(slot) if slot == codec::id_key(&turn.record.id) => {
                self.conversation_record_at(&slot)?.map(|c| (slot, c))
            }
            Some(slot) => self.conversation_at(&slot)?.map(|c| (slot, c)),
            None => None,
        };
        if let Some((slot, before)) = stored {
            return Ok(Touched {
                slot,
                after: before.clone(),
                before: Some(before),
                opened_by: None,
            });
        }
        let slot = match codec::ulid_of(id) {
            Some(ulid) => codec::ulid_key(ulid),
            // A client's own id: the slot of its first turn, so listings
            // keep creation order.
            None => codec::ulid_of(&turn.record.id)
                .map_or_else(|| codec::ulid_key(ulid::Ulid::new()), codec::ulid_key),
        };
        Ok(Touched {
            slot,
            before: None,
            after: ConversationRecord::opening(turn),
            opened_by: Some(at),
        })
    }

    /// The conversation that owns the turn's text, when another one does;
    /// else this one becomes its owner.
    fn text_owner(
        &self,
        turn: &CapturedTurn,
        conversation: &Touched,
        owners: &mut BatchOwners,
        remembered: &mut TextOwners,
        pairs: &mut Vec<(Kind, runs::Key, runs::Value)>,
    ) -> Result<Option<String>, StoreError> {
        let Some(text) = turn.signals.text_hash.as_deref() else {
            return Ok(None);
        };
        let this = &conversation.after.id;
        let owner = match owners.seen.get(text) {
            Some(owner) => Some(owner.clone()),
            None => {
                let key = hashed(text);
                let owner = match remembered.get(&key) {
                    Some(owner) => Some(owner.id),
                    None => self.stored_owner(text, key, remembered)?,
                };
                if owner.is_none()
                    && let Some(slot) = value_of(&conversation.slot)
                {
                    pairs.push((Kind::Text, key, slot));
                    owners.new.push((
                        key,
                        Owner {
                            slot: conversation.slot.clone(),
                            id: this.clone(),
                        },
                    ));
                }
                owners.seen.insert(
                    text.to_string(),
                    owner.clone().unwrap_or_else(|| this.clone()),
                );
                owner
            }
        };
        Ok(owner.filter(|o| o != this))
    }

    /// The owner of a text as stored. A pair found for the text is only
    /// believed while its conversation still holds that text, first; one
    /// that does is remembered.
    fn stored_owner(
        &self,
        text: &str,
        key: runs::Key,
        remembered: &mut TextOwners,
    ) -> Result<Option<String>, StoreError> {
        let Some(slot) = self.runs.get(Kind::Text, &key)? else {
            return Ok(None);
        };
        let Some((id, signals)) = self.signals_at(&slot)? else {
            return Ok(None);
        };
        if owned_text(&signals) != Some(text) {
            return Ok(None);
        }
        remembered.remember(
            key,
            Owner {
                slot: slot.to_vec(),
                id: id.clone(),
            },
        );
        Ok(Some(id))
    }

    /// Gives the batch's new conversations their positions and writes their
    /// listings as one block per value.
    fn list_new(&self, batch_id: u64, touched: &mut [Touched], changes: &mut Changes) {
        let mut blocks: BTreeMap<Posting, Vec<Entry>> = BTreeMap::new();
        let new = touched.iter_mut().filter(|t| t.before.is_none());
        for (index, t) in (0u32..).zip(new) {
            let position = Position(batch_id, index);
            t.after.position = Some(position);
            let entry = Entry::new(position, postings::created_ms(&t.after, &t.slot), &t.slot);
            for p in postings::postings(&t.after) {
                blocks.entry(p).or_default().push(entry.clone());
            }
            changes.listed_whole(&t.slot);
            if codec::ulid_of(&t.after.id).is_none() {
                changes.put(Tree::Slots, t.after.id.as_bytes(), t.slot.clone());
            }
        }
        for (posting, entries) in blocks {
            changes.put(
                Tree::Postings,
                &postings::block_key(&posting, batch_id),
                postings::encode_block(&entries),
            );
        }
    }
}

/// A new conversation of one turn is kept as that turn's record alone
/// when the record's key is its slot: the record carries what the
/// conversation adds (see [`ConversationRecord::opened_by`]) and no
/// conversation record is written until a second turn or a review.
fn embed(t: &Touched, batch: &mut [CapturedTurn], changes: &mut Changes) {
    let (Some(position), Some(i), [first]) = (
        t.after.position,
        t.opened_by,
        t.after.inference_ids.as_slice(),
    ) else {
        return;
    };
    if batch[i].record.id != *first || codec::id_key(first) != t.slot {
        return;
    }
    let opening = Opening {
        position,
        parent_id: t.after.parent_id.clone(),
        signals: t.after.signals.clone(),
    };
    // Only when the conversation read back from the record is exactly the
    // one stored: listings and tallies were worked out from it.
    if ConversationRecord::opened_with(&batch[i].record, &opening, t.after.preview.clone())
        == t.after
    {
        batch[i].record.opens = Some(opening);
        changes.embedded(&t.slot);
    }
}
