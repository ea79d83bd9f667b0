//! Inference records several to a sled value (layout 3).
//!
//! sled 0.34 pays per entry: a walk down the tree, a page fragment, and a
//! leaf split past 16 entries that writes both halves whole. Records
//! arrive in key order, so each split leaves its left half closed for
//! good and the next leaf splits again eight records later. A capture
//! batch therefore writes its records as groups of up to [`GROUP`], one
//! sled entry each, under a key of their own that sorts at or before
//! every member: `[GROUP_TAG][the first member's ULID]`.
//!
//! Only records whose keys come after every record stored so far are
//! grouped, so groups never overlap and the one group that can hold a
//! key is the last one keyed at or before it. A record that completes
//! after later ones were stored (a long stream) is written alone under
//! its own key, as every record of layout 2 was; a lookup that misses
//! the group reads that key.
//!
//! A group's value: `[GROUP_FORMAT][count u8]`, then per member its
//! 16-byte ULID and its encoded record's length (u32 LE), then the
//! encoded records one after another (each as `codec::encode` made it,
//! so reading one member decompresses only that one).

use super::codec::{self, ULID_TAG, ulid_bytes};
use super::conversations::{Changes, Held, Tree};
use super::{SledStore, io};
use crate::store::StoreError;
use sled::IVec;
use std::collections::BTreeMap;
use std::ops::Range;

/// Records per group: past eight, sled's work per record falls little
/// further (docs/BENCHMARKS.md, "what several records to a sled value
/// would save"), while reading one record still fetches the whole value.
pub(super) const GROUP: usize = 8;

const GROUP_TAG: u8 = 3;
const GROUP_FORMAT: u8 = 1;
const MEMBER_HEAD: usize = 16 + 4;

/// A record's ULID as key bytes, big-endian so that they sort by time.
pub(super) type Ulid = [u8; 16];

fn record_key(ulid: &Ulid) -> Vec<u8> {
    codec::ulid_key(ulid::Ulid(u128::from_be_bytes(*ulid)))
}

fn group_key(first: &Ulid) -> Vec<u8> {
    [&[GROUP_TAG][..], first].concat()
}

/// Every group key sorts at or after this one.
const GROUPS_START: [u8; 1] = [GROUP_TAG];

fn corrupt(detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        what: "inference group",
        detail: detail.into(),
    }
}

/// A group's members in key order: each ULID and where its record lies
/// in the value.
fn members(value: &[u8]) -> Result<Vec<(Ulid, Range<usize>)>, StoreError> {
    let [GROUP_FORMAT, count, rest @ ..] = value else {
        return Err(corrupt("unknown group format"));
    };
    let count = usize::from(*count);
    let heads = rest
        .get(..count * MEMBER_HEAD)
        .ok_or_else(|| corrupt("truncated member list"))?;
    let mut at = 2 + heads.len();
    let mut out = Vec::with_capacity(count);
    for head in heads.chunks_exact(MEMBER_HEAD) {
        let (ulid, len) = head.split_at(16);
        let ulid: Ulid = ulid.try_into().map_err(|_| corrupt("short member id"))?;
        let len = u32::from_le_bytes(len.try_into().map_err(|_| corrupt("short length"))?);
        let end = at
            .checked_add(len as usize)
            .filter(|end| *end <= value.len())
            .ok_or_else(|| corrupt("a member runs past the value"))?;
        out.push((ulid, at..end));
        at = end;
    }
    Ok(out)
}

/// A group's value from its members, in key order.
fn encode_group<'a>(members: impl ExactSizeIterator<Item = (&'a Ulid, &'a [u8])>) -> Vec<u8> {
    let members: Vec<_> = members.collect();
    let body: usize = members.iter().map(|(_, r)| r.len()).sum();
    let mut out = Vec::with_capacity(2 + members.len() * MEMBER_HEAD + body);
    out.push(GROUP_FORMAT);
    out.push(members.len() as u8);
    for (ulid, record) in &members {
        out.extend_from_slice(*ulid);
        out.extend_from_slice(&(record.len() as u32).to_le_bytes());
    }
    for (_, record) in &members {
        out.extend_from_slice(record);
    }
    out
}

impl SledStore {
    /// A record's stored bytes, grouped or alone.
    pub(super) fn record_bytes(&self, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        if let Some(ulid) = ulid_bytes(key)
            && let Some((_, value)) = self.group_for(&ulid)?
            && let Some(range) = members(&value)?
                .into_iter()
                .find_map(|(m, range)| (m == ulid).then_some(range))
        {
            return Ok(Some(value.subslice(range.start, range.len())));
        }
        self.inferences.get(key).map_err(io)
    }

    /// The last group keyed at or before a ULID, its key and value: the
    /// only one that can hold it. A client-named id's record (no ULID) is
    /// always stored alone.
    fn group_for(&self, ulid: &Ulid) -> Result<Option<(IVec, IVec)>, StoreError> {
        self.inferences
            .range(GROUPS_START.to_vec()..=group_key(ulid))
            .next_back()
            .transpose()
            .map_err(io)
    }

    /// The greatest ULID of any record stored, grouped or alone: what a
    /// batch's records must come after to be grouped.
    pub(super) fn stored_through(&self) -> Result<Option<Ulid>, StoreError> {
        let alone = self
            .inferences
            .range(vec![ULID_TAG]..vec![ULID_TAG + 1])
            .next_back()
            .transpose()
            .map_err(io)?
            .and_then(|(key, _)| ulid_bytes(&key));
        let grouped = match self
            .inferences
            .scan_prefix(GROUPS_START)
            .next_back()
            .transpose()
            .map_err(io)?
        {
            Some((_, value)) => members(&value)?.last().map(|(ulid, _)| *ulid),
            None => None,
        };
        Ok(alone.max(grouped))
    }

    /// Whether a record is stored; one that comes after every stored
    /// record is not, without a read.
    pub(super) fn is_stored(&self, held: &Held, key: &[u8]) -> Result<bool, StoreError> {
        if let Some(ulid) = ulid_bytes(key)
            && held.stored_through.is_none_or(|through| ulid > through)
        {
            return Ok(false);
        }
        Ok(self.record_bytes(key)?.is_some())
    }

    /// Queues a capture batch's encoded records (`(key, bytes)`): those
    /// after every stored record in groups, the others alone.
    pub(super) fn place_records(
        &self,
        held: &mut Held,
        mut records: Vec<(Vec<u8>, Vec<u8>)>,
        changes: &mut Changes,
    ) {
        records.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let through = held.stored_through;
        let mut grouped: Vec<(Ulid, Vec<u8>)> = Vec::with_capacity(records.len());
        for (key, bytes) in records {
            match ulid_bytes(&key) {
                Some(ulid) if through.is_none_or(|t| ulid > t) => grouped.push((ulid, bytes)),
                _ => changes.put(Tree::Inferences, &key, bytes),
            }
        }
        for group in grouped.chunks(GROUP) {
            let value = encode_group(group.iter().map(|(u, r)| (u, r.as_slice())));
            changes.put(Tree::Inferences, &group_key(&group[0].0), value);
        }
        // Raised before the batch commits: a failed batch then only
        // leaves its records to be written alone on retry, while a
        // bound raised late could let a group overlap one stored.
        if let Some((last, _)) = grouped.last() {
            held.stored_through = Some(*last);
        }
    }

    /// Turns the removal of records (`Changes::remove_record`) into
    /// removals of those stored alone and rewrites of the groups that
    /// held the others.
    pub(super) fn resolve_removed_records(&self, changes: &mut Changes) -> Result<(), StoreError> {
        let mut groups: BTreeMap<Vec<u8>, (IVec, Vec<Ulid>)> = BTreeMap::new();
        for key in changes.take_removed_records() {
            match self.holding_group(&key)? {
                Some((gk, value, ulid)) => {
                    let (_, gone) = groups
                        .entry(gk.to_vec())
                        .or_insert_with(|| (value, Vec::new()));
                    gone.push(ulid);
                }
                None => changes.remove(Tree::Inferences, &key),
            }
        }
        for (gk, (value, gone)) in groups {
            let kept: Vec<_> = members(&value)?
                .into_iter()
                .filter(|(m, _)| !gone.contains(m))
                .collect();
            if kept.is_empty() {
                changes.remove(Tree::Inferences, &gk);
            } else {
                // The key stays: it still sorts at or before every member,
                // and no other group begins inside this one's span.
                let value = encode_group(kept.iter().map(|(m, r)| (m, &value[r.clone()])));
                changes.put(Tree::Inferences, &gk, value);
            }
        }
        Ok(())
    }

    /// The group a record is a member of, with the record's ULID.
    fn holding_group(&self, key: &[u8]) -> Result<Option<(IVec, IVec, Ulid)>, StoreError> {
        let Some(ulid) = ulid_bytes(key) else {
            return Ok(None);
        };
        let Some((gk, value)) = self.group_for(&ulid)? else {
            return Ok(None);
        };
        let member = members(&value)?.iter().any(|(m, _)| *m == ulid);
        Ok(member.then_some((gk, value, ulid)))
    }

    /// Stored records with keys between two (both excluded), in key order:
    /// those alone and the groups' members merged, at most `limit`.
    pub(super) fn records_between(
        &self,
        after: Option<&[u8]>,
        before: &[u8],
        limit: usize,
    ) -> Result<Vec<IVec>, StoreError> {
        use std::ops::Bound;
        let lower = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_vec()));
        // Group keys sort after every record key, so this range holds
        // records alone only.
        let mut alone = self
            .inferences
            .range((lower, Bound::Excluded(before.to_vec())))
            .take(limit)
            .peekable();
        let mut grouped = self
            .members_between(after, before, limit)?
            .into_iter()
            .peekable();
        let mut out = Vec::with_capacity(limit.min(1024));
        while out.len() < limit {
            let take_alone = match (alone.peek(), grouped.peek()) {
                (Some(Err(_)), _) => true,
                (Some(Ok((key, _))), Some((member, _))) => key.as_ref() < member.as_slice(),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_alone {
                if let Some(next) = alone.next() {
                    out.push(next.map_err(io)?.1);
                }
            } else if let Some((_, bytes)) = grouped.next() {
                out.push(bytes);
            }
        }
        Ok(out)
    }

    /// Up to `limit` grouped records with keys between two, in key order.
    fn members_between(
        &self,
        after: Option<&[u8]>,
        before: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, IVec)>, StoreError> {
        let start = match after {
            Some(a) => match ulid_bytes(a) {
                Some(ulid) => self
                    .group_for(&ulid)?
                    .map_or_else(|| GROUPS_START.to_vec(), |(key, _)| key.to_vec()),
                // A client-named id's key sorts after every ULID key.
                None if a.first() > Some(&ULID_TAG) => return Ok(Vec::new()),
                None => GROUPS_START.to_vec(),
            },
            None => GROUPS_START.to_vec(),
        };
        let mut out = Vec::new();
        for group in self.inferences.range(start..) {
            let (gk, value) = group.map_err(io)?;
            if gk.first() != Some(&GROUP_TAG) {
                break;
            }
            for (ulid, range) in members(&value)? {
                let key = record_key(&ulid);
                if key.as_slice() >= before || out.len() == limit {
                    return Ok(out);
                }
                if after.is_none_or(|a| key.as_slice() > a) {
                    out.push((key, value.subslice(range.start, range.len())));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
