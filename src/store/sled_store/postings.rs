//! The conversation listings: for each filterable value (every
//! conversation, a status, a threat type, a severity, an alias, a version,
//! a user), the conversations that have it, newest first.
//!
//! A conversation's place is its [`Position`]: the capture batch that first
//! stored it and its index there. Entries are grouped in *blocks*, one per
//! value per batch — `[field][value]␟[batch]` → `[index][created ms][slot]…`
//! sorted by index — so a capture batch writes one block per value it
//! holds, not one entry per conversation per value. A later change (a
//! review sets a threat type, a turn adds a version) rewrites the block of
//! the conversation's batch. Batch ids are the batch's time in
//! milliseconds, shifted, plus a sequence: blocks sort by time.

use super::codec::key_millis;
use crate::store::{ConversationRecord, IndexField, Position};
use std::collections::BTreeSet;

const SEP: u8 = 0x1f;
/// `[index u32][created ms u64][slot 17]`.
pub const ENTRY: usize = 4 + 8 + 17;

/// A value a conversation is listed under.
pub type Posting = (u8, String);

const ALL: u8 = b'a';

pub fn field_byte(field: IndexField) -> u8 {
    match field {
        IndexField::Status => b's',
        IndexField::ThreatType => b't',
        IndexField::Severity => b'v',
        IndexField::Alias => b'A',
        IndexField::Version => b'V',
        IndexField::User => b'u',
    }
}

/// The listing of every conversation.
pub fn all() -> Posting {
    (ALL, String::new())
}

/// Every value the conversation is listed under.
pub fn postings(c: &ConversationRecord) -> BTreeSet<Posting> {
    let r = &c.review;
    let mut out = BTreeSet::new();
    out.insert(all());
    out.insert((
        field_byte(IndexField::Status),
        r.status.as_str().to_string(),
    ));
    let optional = [
        (IndexField::ThreatType, r.threat_type.as_deref()),
        (IndexField::Severity, r.severity.as_deref()),
        (IndexField::Alias, c.alias.as_deref()),
        (IndexField::User, c.user.as_deref()),
    ];
    for (field, value) in optional {
        if let Some(v) = value {
            out.insert((field_byte(field), v.to_string()));
        }
    }
    for v in &c.versions {
        out.insert((field_byte(IndexField::Version), v.clone()));
    }
    out
}

/// The key prefix of a value's blocks.
pub fn prefix(posting: &Posting) -> Vec<u8> {
    let mut key = Vec::with_capacity(posting.1.len() + 2);
    key.push(posting.0);
    key.extend_from_slice(posting.1.as_bytes());
    key.push(SEP);
    key
}

pub fn block_key(posting: &Posting, batch: u64) -> Vec<u8> {
    let mut key = prefix(posting);
    key.extend_from_slice(&batch.to_be_bytes());
    key
}

/// The batch a block key ends with.
pub fn batch_of(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// Milliseconds since the epoch a batch id stands for.
pub fn batch_millis(batch: u64) -> u64 {
    batch >> 16
}

/// The first batch id of a millisecond.
pub fn batch_at(millis: u64) -> u64 {
    millis << 16
}

/// One entry of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub index: u32,
    pub created_ms: u64,
    pub slot: Vec<u8>,
}

impl Entry {
    pub fn new(position: Position, created_ms: u64, slot: &[u8]) -> Self {
        Self {
            index: position.1,
            created_ms,
            slot: slot.to_vec(),
        }
    }
}

pub fn decode_block(bytes: &[u8]) -> Vec<Entry> {
    bytes
        .chunks_exact(ENTRY)
        .map(|e| Entry {
            index: u32::from_be_bytes([e[0], e[1], e[2], e[3]]),
            created_ms: u64::from_be_bytes(e[4..12].try_into().unwrap_or([0; 8])),
            slot: e[12..].to_vec(),
        })
        .collect()
}

pub fn encode_block(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY);
    for e in entries {
        out.extend_from_slice(&e.index.to_be_bytes());
        out.extend_from_slice(&e.created_ms.to_be_bytes());
        // Slots are 17 bytes for generated ids; a longer one (a client's
        // own id, never a slot) cannot reach here.
        let mut slot = [0u8; 17];
        let n = e.slot.len().min(17);
        slot[..n].copy_from_slice(&e.slot[..n]);
        out.extend_from_slice(&slot);
    }
    out
}

/// Adds or removes one entry in a block's bytes; the block stays sorted.
pub fn edit_block(bytes: Option<&[u8]>, entry: &Entry, add: bool) -> Vec<u8> {
    let mut entries = bytes.map(decode_block).unwrap_or_default();
    entries.retain(|e| e.index != entry.index);
    if add {
        let at = entries.partition_point(|e| e.index < entry.index);
        entries.insert(at, entry.clone());
    }
    encode_block(&entries)
}

/// A listing cursor: the position of the last conversation returned.
pub fn cursor(position: Position) -> String {
    let mut bytes = position.0.to_be_bytes().to_vec();
    bytes.extend_from_slice(&position.1.to_be_bytes());
    hex::encode(bytes)
}

pub fn parse_cursor(cursor: &str) -> Option<Position> {
    let bytes = hex::decode(cursor).ok()?;
    let batch = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let index = u32::from_be_bytes(bytes.get(8..12)?.try_into().ok()?);
    Some(Position(batch, index))
}

/// When a conversation was created, for its listing entry: its slot's
/// time when it has one, else the stored `created_at`.
pub fn created_ms(c: &ConversationRecord, slot: &[u8]) -> u64 {
    humantime::parse_rfc3339(&c.created_at)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or_else(|| key_millis(slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_stay_sorted_through_edits_and_cursors_round_trip() {
        let e = |i: u32| Entry {
            index: i,
            created_ms: 1_000 + u64::from(i),
            slot: vec![1; 17],
        };
        let block = encode_block(&[e(1), e(5)]);
        let added = edit_block(Some(&block), &e(3), true);
        assert_eq!(
            decode_block(&added)
                .iter()
                .map(|x| x.index)
                .collect::<Vec<_>>(),
            [1, 3, 5]
        );
        let removed = edit_block(Some(&added), &e(1), false);
        assert_eq!(decode_block(&removed), [e(3), e(5)]);
        assert_eq!(
            parse_cursor(&cursor(Position(batch_at(99), 7))),
            Some(Position(batch_at(99), 7))
        );
        assert_eq!(parse_cursor("zz"), None);
        assert_eq!(batch_millis(batch_at(1_234) + 3), 1_234);
        let key = block_key(&all(), 77);
        assert_eq!(batch_of(&key), 77);
    }
}
