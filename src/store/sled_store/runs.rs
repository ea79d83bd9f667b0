//! Point lookups by random keys — the history key a follow-up presents, an
//! upstream completion id, the hash of a conversation's text — without a
//! random write per inference. sled pays for a small entry at a random
//! place in a tree with a page rewrite, far more than for the entry, so
//! these pairs are kept like a small log-structured merge tree inside sled:
//!
//! - each capture batch appends its pairs as one log entry (written in the
//!   batch's own transaction, so they are exactly as durable as it), and
//!   they stay in memory, `pending`;
//! - past [`RUN_PAIRS`] pending pairs of a kind, they are sorted and written
//!   as a *run*: fixed-width pairs in chunks of [`CHUNK_PAIRS`], with a
//!   header holding the count and a Bloom filter; the log entries go in the
//!   same transaction;
//! - eight runs of the smallest size tier are merged into one of the
//!   next, on a background thread, so a lookup reads few runs. A merge
//!   streams: it reads its inputs a chunk at a time and writes the merged
//!   run in small batches, holding a few chunks and the new filter, not
//!   the pairs. Larger runs are not merged ([`MAX_MERGED_TIER`]), so a
//!   merge's time and filter stay bounded too;
//! - a lookup checks `pending`, then the runs newest first, skipping those
//!   whose filter says the key is absent: a chunk seek and a binary search.
//!
//! A key looked up gets the value written last (a merged run ranks as the
//! newest of its inputs).

use crate::store::StoreError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

pub const KEY: usize = 16;
pub const VALUE: usize = 17;
const PAIR: usize = KEY + VALUE;
/// Pending pairs of a kind that make a run.
const RUN_PAIRS: usize = 32_768;
/// Pairs per sled value in a run.
const CHUNK_PAIRS: usize = 256;
/// Runs of one tier merged at once.
const FANOUT: usize = 8;
/// The highest tier whose runs are merged. Merging tier 1 (eight runs of
/// up to a million pairs) would rewrite millions of pairs at once and
/// build a filter for all of them; beyond it runs accumulate, and a
/// lookup tests one more Bloom filter (in memory) per run of about a
/// quarter of a million to a million pairs.
const MAX_MERGED_TIER: u32 = 0;
/// Filter bits per pair (about 1 % false positives with 7 probes).
const BLOOM_BITS_PER_PAIR: usize = 10;
const BLOOM_PROBES: u64 = 7;

pub type Key = [u8; KEY];
pub type Value = [u8; VALUE];

/// What a pair maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Continuation key → the inference that left it.
    Thread,
    /// Hash of an upstream completion id → its inference.
    Completion,
    /// Normalised text hash → the conversation that owns the text.
    Text,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Thread, Kind::Completion, Kind::Text];

    fn byte(self) -> u8 {
        match self {
            Kind::Thread => b'T',
            Kind::Completion => b'C',
            Kind::Text => b'X',
        }
    }
}

/// One run: its place in recency order and what it holds.
struct Run {
    kind: Kind,
    /// Newer runs rank higher; a merged run takes its newest input's rank
    /// and the next generation.
    rank: u64,
    generation: u16,
    count: u64,
    bloom: Vec<u8>,
}

impl Run {
    fn id(&self) -> [u8; 11] {
        let mut id = [0u8; 11];
        id[0] = self.kind.byte();
        id[1..9].copy_from_slice(&self.rank.to_be_bytes());
        id[9..11].copy_from_slice(&self.generation.to_be_bytes());
        id
    }

    fn tier(&self) -> u32 {
        let mut tier = 0;
        let mut size = RUN_PAIRS as u64;
        while self.count > size * FANOUT as u64 / 2 {
            size *= FANOUT as u64;
            tier += 1;
        }
        tier
    }

    fn may_hold(&self, key: &Key) -> bool {
        bloom_contains(&self.bloom, key)
    }
}

#[derive(Default)]
struct State {
    pending: HashMap<Kind, HashMap<Key, Value>>,
    /// Log entries holding the pending pairs, by kind.
    logged: HashMap<Kind, Vec<Vec<u8>>>,
    /// Pairs being written as a run: still found by lookups meanwhile.
    flushing: HashMap<Kind, Arc<HashMap<Key, Value>>>,
    /// Every run, newest first within a kind.
    runs: Vec<Arc<Run>>,
    next_rank: u64,
    merging: bool,
}

pub struct Runs {
    /// `[kind][rank 8][generation 2][first key 16]` → packed pairs.
    chunks: sled::Tree,
    /// `[kind][rank 8][generation 2]` → `[count u64 LE][bloom]`.
    headers: sled::Tree,
    /// `[kind][batch 8]` → packed pairs not yet in a run.
    log: sled::Tree,
    state: Mutex<State>,
}

fn io(e: sled::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

impl Runs {
    /// Loads the runs' headers and the pending pairs from the log; drops
    /// what an interrupted merge left behind.
    pub fn open(db: &sled::Db) -> Result<Arc<Self>, StoreError> {
        let runs = Self {
            chunks: db.open_tree("index_run_chunks").map_err(io)?,
            headers: db.open_tree("index_run_headers").map_err(io)?,
            log: db.open_tree("index_log").map_err(io)?,
            state: Mutex::new(State::default()),
        };
        let mut state = State::default();
        for entry in runs.headers.iter() {
            let (id, header) = entry.map_err(io)?;
            let run = parse_header(&id, &header)?;
            state.next_rank = state.next_rank.max(run.rank + 1);
            state.runs.push(Arc::new(run));
        }
        state
            .runs
            .sort_by_key(|r| std::cmp::Reverse((r.rank, r.generation)));
        for entry in runs.log.iter() {
            let (key, pairs) = entry.map_err(io)?;
            let kind = kind_of(key.first().copied())?;
            let pending = state.pending.entry(kind).or_default();
            for pair in pairs.chunks_exact(PAIR) {
                let (k, v) = split_pair(pair);
                pending.insert(k, v);
            }
            state.logged.entry(kind).or_default().push(key.to_vec());
        }
        runs.drop_orphan_chunks(&state)?;
        *runs.state.lock() = state;
        Ok(Arc::new(runs))
    }

    /// Chunks of a run whose header never got written (a merge cut short).
    fn drop_orphan_chunks(&self, state: &State) -> Result<(), StoreError> {
        let live: std::collections::HashSet<[u8; 11]> = state.runs.iter().map(|r| r.id()).collect();
        let mut orphans = sled::Batch::default();
        for key in self.chunks.iter().keys() {
            let key = key.map_err(io)?;
            let id: [u8; 11] = key[..11.min(key.len())].try_into().unwrap_or([0; 11]);
            if !live.contains(&id) {
                orphans.remove(key);
            }
        }
        self.chunks.apply_batch(orphans).map_err(io)
    }

    /// The log entries for a batch's new pairs, to write in the batch's
    /// transaction: `(tree key, packed pairs)` per kind.
    pub fn log_entries(batch: u64, pairs: &[(Kind, Key, Value)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        Kind::ALL
            .iter()
            .filter_map(|kind| {
                let mut packed = Vec::new();
                for (k, key, value) in pairs.iter().filter(|p| p.0 == *kind) {
                    debug_assert_eq!(k, kind);
                    packed.extend_from_slice(key);
                    packed.extend_from_slice(value);
                }
                (!packed.is_empty()).then(|| {
                    let mut log_key = vec![kind.byte()];
                    log_key.extend_from_slice(&batch.to_be_bytes());
                    (log_key, packed)
                })
            })
            .collect()
    }

    pub fn log_tree(&self) -> &sled::Tree {
        &self.log
    }

    /// Makes a committed batch's pairs visible; writes a run once a kind
    /// has enough pending.
    pub fn committed(
        self: &Arc<Self>,
        log: &[(Vec<u8>, Vec<u8>)],
        pairs: &[(Kind, Key, Value)],
    ) -> Result<(), StoreError> {
        let full: Vec<Kind> = {
            let mut state = self.state.lock();
            for (kind, key, value) in pairs {
                state.pending.entry(*kind).or_default().insert(*key, *value);
            }
            for (log_key, _) in log {
                let kind = kind_of(log_key.first().copied())?;
                state.logged.entry(kind).or_default().push(log_key.clone());
            }
            Kind::ALL
                .into_iter()
                .filter(|k| state.pending.get(k).is_some_and(|p| p.len() >= RUN_PAIRS))
                .collect()
        };
        for kind in full {
            self.write_run(kind)?;
        }
        self.maybe_merge();
        Ok(())
    }

    /// The value last written for `key`.
    pub fn get(&self, kind: Kind, key: &Key) -> Result<Option<Value>, StoreError> {
        let runs: Vec<Arc<Run>> = {
            let state = self.state.lock();
            if let Some(v) = state.pending.get(&kind).and_then(|p| p.get(key)) {
                return Ok(Some(*v));
            }
            if let Some(v) = state.flushing.get(&kind).and_then(|p| p.get(key)) {
                return Ok(Some(*v));
            }
            state
                .runs
                .iter()
                .filter(|r| r.kind == kind)
                .cloned()
                .collect()
        };
        for run in runs.iter().filter(|r| r.may_hold(key)) {
            if let Some(v) = self.find_in_run(run, key)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Visits every pair of `kind`, each key's newest value first: a key
    /// met again carries an older value.
    pub fn for_each(
        &self,
        kind: Kind,
        visit: &mut dyn FnMut(&Key, &Value) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let (recent, runs) = {
            let state = self.state.lock();
            let recent: Vec<(Key, Value)> = [
                state.pending.get(&kind),
                state.flushing.get(&kind).map(|f| &**f),
            ]
            .into_iter()
            .flatten()
            .flat_map(|pairs| pairs.iter().map(|(k, v)| (*k, *v)))
            .collect();
            let runs: Vec<Arc<Run>> = state
                .runs
                .iter()
                .filter(|r| r.kind == kind)
                .cloned()
                .collect();
            (recent, runs)
        };
        for (key, value) in &recent {
            visit(key, value)?;
        }
        for run in &runs {
            for entry in self.chunks.scan_prefix(run.id()) {
                let (_, chunk) = entry.map_err(io)?;
                for pair in chunk.chunks_exact(PAIR) {
                    let (key, value) = split_pair(pair);
                    visit(&key, &value)?;
                }
            }
        }
        Ok(())
    }

    fn find_in_run(&self, run: &Run, key: &Key) -> Result<Option<Value>, StoreError> {
        let id = run.id();
        let mut upper = id.to_vec();
        upper.extend_from_slice(key);
        let Some(entry) = self.chunks.range(id.to_vec()..=upper).next_back() else {
            return Ok(None);
        };
        let (_, chunk) = entry.map_err(io)?;
        Ok(search(&chunk, key))
    }

    /// Writes a kind's pending pairs as a new run and drops their log
    /// entries, in one transaction.
    fn write_run(&self, kind: Kind) -> Result<(), StoreError> {
        let (pairs, logged, rank) = {
            let mut state = self.state.lock();
            let pending = state.pending.remove(&kind).unwrap_or_default();
            let logged = state.logged.remove(&kind).unwrap_or_default();
            let rank = state.next_rank;
            state.next_rank += 1;
            let pending = Arc::new(pending);
            state.flushing.insert(kind, pending.clone());
            (pending, logged, rank)
        };
        let mut sorted: Vec<(Key, Value)> = pairs.iter().map(|(k, v)| (*k, *v)).collect();
        sorted.sort_unstable_by_key(|(k, _)| *k);
        let run = Run {
            kind,
            rank,
            generation: 0,
            count: sorted.len() as u64,
            bloom: bloom_of(sorted.iter().map(|(k, _)| k), sorted.len()),
        };
        let written = self.store_run(&run, &sorted, &logged);
        let mut state = self.state.lock();
        state.flushing.remove(&kind);
        match written {
            Ok(()) => {
                state.runs.insert(0, Arc::new(run));
                state
                    .runs
                    .sort_by_key(|r| std::cmp::Reverse((r.rank, r.generation)));
                Ok(())
            }
            Err(e) => {
                // Nothing was lost: the pairs go back to pending, their
                // log entries stay.
                let pending = state.pending.entry(kind).or_default();
                for (k, v) in sorted {
                    pending.entry(k).or_insert(v);
                }
                state.logged.entry(kind).or_default().extend(logged);
                Err(e)
            }
        }
    }

    /// Writes a run's chunks, then publishes it (see [`Runs::publish`]).
    fn store_run(
        &self,
        run: &Run,
        sorted: &[(Key, Value)],
        logged: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        let mut out = ChunkWriter::new(&self.chunks, run.id());
        for (key, value) in sorted {
            out.push(key, value)?;
        }
        out.finish()?;
        self.publish(run, logged, &[])
    }

    /// Makes a run whose chunks are written live: in one transaction its
    /// header, the removal of `logged` log entries and of the `replaced`
    /// runs' headers. Chunks without a header are dropped at the next open.
    fn publish(
        &self,
        run: &Run,
        logged: &[Vec<u8>],
        replaced: &[[u8; 11]],
    ) -> Result<(), StoreError> {
        let id = run.id();
        let mut header = run.count.to_le_bytes().to_vec();
        header.extend_from_slice(&run.bloom);
        use sled::Transactional;
        (&self.headers, &self.log)
            .transaction(|(headers, log)| {
                headers.insert(&id[..], header.as_slice())?;
                for old in replaced {
                    headers.remove(&old[..])?;
                }
                for key in logged {
                    log.remove(key.as_slice())?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StoreError::Io(format!("index run transaction failed: {e:?}")))
    }

    /// Starts a merge on a background thread when some tier holds
    /// [`FANOUT`] runs and none is running.
    fn maybe_merge(self: &Arc<Self>) {
        let picked = {
            let mut state = self.state.lock();
            if state.merging {
                return;
            }
            let picked = pick_merge(&state.runs);
            if picked.is_some() {
                state.merging = true;
            }
            picked
        };
        let Some(inputs) = picked else { return };
        let runs = self.clone();
        let spawned = std::thread::Builder::new()
            .name("flywheel-index".into())
            .spawn(move || {
                if let Err(e) = runs.merge(&inputs) {
                    tracing::error!(error = %e, "merging index runs failed; lookups stay correct, only slower");
                }
                runs.state.lock().merging = false;
                runs.maybe_merge();
            });
        if spawned.is_err() {
            self.state.lock().merging = false;
        }
    }

    /// Merges `inputs` (one kind, newest first) into one run that ranks
    /// as the newest of them; for a key in several, the newest value wins.
    fn merge(&self, inputs: &[Arc<Run>]) -> Result<(), StoreError> {
        let Some(newest) = inputs.first() else {
            return Ok(());
        };
        let mut readers = inputs
            .iter()
            .map(|run| RunReader::new(self.chunks.scan_prefix(run.id())))
            .collect::<Result<Vec<_>, _>>()?;
        // Sized for every input pair: a key in several inputs only leaves
        // the filter a little emptier.
        let mut bloom = empty_bloom(inputs.iter().map(|r| r.count as usize).sum());
        let mut run = Run {
            kind: newest.kind,
            rank: newest.rank,
            generation: newest.generation.saturating_add(1),
            count: 0,
            bloom: Vec::new(),
        };
        let mut out = ChunkWriter::new(&self.chunks, run.id());
        while let Some(key) = readers.iter().filter_map(RunReader::key).min() {
            // Readers are newest first: the first holding the key gives
            // its value, the others skip theirs.
            let mut value = None;
            for reader in &mut readers {
                if reader.key() == Some(key) {
                    let v = reader.value();
                    value.get_or_insert(v);
                    reader.advance()?;
                }
            }
            if let Some(value) = value {
                bloom_insert(&mut bloom, &key);
                out.push(&key, &value)?;
                run.count += 1;
            }
        }
        out.finish()?;
        run.bloom = bloom;
        let replaced: Vec<[u8; 11]> = inputs.iter().map(|r| r.id()).collect();
        self.publish(&run, &[], &replaced)?;
        {
            let mut state = self.state.lock();
            state
                .runs
                .retain(|r| !inputs.iter().any(|i| Arc::ptr_eq(i, r)));
            state.runs.push(Arc::new(run));
            state
                .runs
                .sort_by_key(|r| std::cmp::Reverse((r.rank, r.generation)));
        }
        let mut gone = sled::Batch::default();
        for id in &replaced {
            for key in self.chunks.scan_prefix(id).keys() {
                gone.remove(key.map_err(io)?);
            }
        }
        self.chunks.apply_batch(gone).map_err(io)
    }

    /// Forgets every run and pending pair (a migration starting over).
    pub fn clear(&self) -> Result<(), StoreError> {
        for tree in [&self.chunks, &self.headers, &self.log] {
            tree.clear().map_err(io)?;
        }
        *self.state.lock() = State::default();
        Ok(())
    }

    /// Writes every pending pair into runs (used once a migration has fed
    /// everything in, so nothing is left in the log).
    pub fn flush_all(self: &Arc<Self>) -> Result<(), StoreError> {
        for kind in Kind::ALL {
            let has = self
                .state
                .lock()
                .pending
                .get(&kind)
                .is_some_and(|p| !p.is_empty());
            if has {
                self.write_run(kind)?;
            }
        }
        Ok(())
    }
}

/// A run's pairs in key order, read a chunk at a time.
struct RunReader {
    chunks: sled::Iter,
    chunk: sled::IVec,
    at: usize,
}

impl RunReader {
    fn new(chunks: sled::Iter) -> Result<Self, StoreError> {
        let mut reader = Self {
            chunks,
            chunk: sled::IVec::default(),
            at: 0,
        };
        reader.next_chunk()?;
        Ok(reader)
    }

    /// The current pair, `None` once the run is read.
    fn pair(&self) -> Option<&[u8]> {
        self.chunk.get(self.at..self.at + PAIR)
    }

    fn key(&self) -> Option<Key> {
        self.pair().map(|p| split_pair(p).0)
    }

    fn value(&self) -> Value {
        self.pair().map_or([0; VALUE], |p| split_pair(p).1)
    }

    fn advance(&mut self) -> Result<(), StoreError> {
        self.at += PAIR;
        if self.pair().is_none() {
            self.next_chunk()?;
        }
        Ok(())
    }

    /// Moves to the next chunk holding a pair, or to the end.
    fn next_chunk(&mut self) -> Result<(), StoreError> {
        self.at = 0;
        loop {
            match self.chunks.next() {
                Some(entry) => {
                    self.chunk = entry.map_err(io)?.1;
                    if self.pair().is_some() {
                        return Ok(());
                    }
                }
                None => {
                    self.chunk = sled::IVec::default();
                    return Ok(());
                }
            }
        }
    }
}

/// Chunks of sorted pairs written as they fill, a few at a time.
struct ChunkWriter<'a> {
    tree: &'a sled::Tree,
    id: [u8; 11],
    chunk: Vec<u8>,
    batch: sled::Batch,
    batched: usize,
}

/// Chunks per write: about half a MiB.
const CHUNKS_PER_WRITE: usize = 64;

impl<'a> ChunkWriter<'a> {
    fn new(tree: &'a sled::Tree, id: [u8; 11]) -> Self {
        Self {
            tree,
            id,
            chunk: Vec::with_capacity(CHUNK_PAIRS * PAIR),
            batch: sled::Batch::default(),
            batched: 0,
        }
    }

    fn push(&mut self, key: &Key, value: &Value) -> Result<(), StoreError> {
        self.chunk.extend_from_slice(key);
        self.chunk.extend_from_slice(value);
        if self.chunk.len() == CHUNK_PAIRS * PAIR {
            self.end_chunk()?;
        }
        Ok(())
    }

    /// A chunk is keyed by the run and its first key.
    fn end_chunk(&mut self) -> Result<(), StoreError> {
        let Some(first) = self.chunk.get(..KEY) else {
            return Ok(());
        };
        let key = [&self.id[..], first].concat();
        let packed = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK_PAIRS * PAIR));
        self.batch.insert(key, packed);
        self.batched += 1;
        if self.batched == CHUNKS_PER_WRITE {
            self.write()?;
        }
        Ok(())
    }

    fn write(&mut self) -> Result<(), StoreError> {
        self.batched = 0;
        self.tree
            .apply_batch(std::mem::take(&mut self.batch))
            .map_err(io)
    }

    fn finish(mut self) -> Result<(), StoreError> {
        self.end_chunk()?;
        self.write()
    }
}

/// The oldest [`FANOUT`] runs of the lowest tier that has that many.
fn pick_merge(runs: &[Arc<Run>]) -> Option<Vec<Arc<Run>>> {
    for kind in Kind::ALL {
        let mut tiers: std::collections::BTreeMap<u32, Vec<Arc<Run>>> = Default::default();
        for run in runs.iter().filter(|r| r.kind == kind) {
            tiers.entry(run.tier()).or_default().push(run.clone());
        }
        for (_, same) in tiers.range(..=MAX_MERGED_TIER) {
            if same.len() >= FANOUT {
                // `runs` is newest first: take the oldest, keep the order.
                return Some(same[same.len() - FANOUT..].to_vec());
            }
        }
    }
    None
}

fn kind_of(byte: Option<u8>) -> Result<Kind, StoreError> {
    Kind::ALL
        .into_iter()
        .find(|k| Some(k.byte()) == byte)
        .ok_or_else(|| StoreError::Corrupt {
            what: "index run",
            detail: "unknown kind".into(),
        })
}

fn parse_header(id: &[u8], header: &[u8]) -> Result<Run, StoreError> {
    let corrupt = || StoreError::Corrupt {
        what: "index run header",
        detail: format!("{} bytes", header.len()),
    };
    if id.len() != 11 || header.len() < 8 {
        return Err(corrupt());
    }
    let kind = kind_of(id.first().copied())?;
    let rank = u64::from_be_bytes(id[1..9].try_into().map_err(|_| corrupt())?);
    let generation = u16::from_be_bytes(id[9..11].try_into().map_err(|_| corrupt())?);
    let count = u64::from_le_bytes(header[..8].try_into().map_err(|_| corrupt())?);
    Ok(Run {
        kind,
        rank,
        generation,
        count,
        bloom: header[8..].to_vec(),
    })
}

fn split_pair(pair: &[u8]) -> (Key, Value) {
    let mut key = [0u8; KEY];
    let mut value = [0u8; VALUE];
    key.copy_from_slice(&pair[..KEY]);
    value.copy_from_slice(&pair[KEY..PAIR]);
    (key, value)
}

/// Binary search of a chunk's fixed-width, sorted pairs.
fn search(chunk: &[u8], key: &Key) -> Option<Value> {
    let n = chunk.len() / PAIR;
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let at = &chunk[mid * PAIR..mid * PAIR + KEY];
        match at.cmp(key.as_slice()) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Some(split_pair(&chunk[mid * PAIR..]).1),
        }
    }
    None
}

/// Probe positions: the keys are hashes already, so two halves of one
/// give the double-hashing pair.
fn probes(key: &Key, bits: u64) -> impl Iterator<Item = u64> {
    let h1 = u64::from_le_bytes(key[..8].try_into().unwrap_or([0; 8]));
    let h2 = u64::from_le_bytes(key[8..].try_into().unwrap_or([0; 8])) | 1;
    (0..BLOOM_PROBES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % bits)
}

fn bloom_of<'a>(keys: impl Iterator<Item = &'a Key>, count: usize) -> Vec<u8> {
    let mut bloom = empty_bloom(count);
    for key in keys {
        bloom_insert(&mut bloom, key);
    }
    bloom
}

/// A filter sized for `count` keys.
fn empty_bloom(count: usize) -> Vec<u8> {
    let bits = (count * BLOOM_BITS_PER_PAIR).max(64).next_multiple_of(8);
    vec![0u8; bits / 8]
}

fn bloom_insert(bloom: &mut [u8], key: &Key) {
    let bits = (bloom.len() * 8) as u64;
    for p in probes(key, bits) {
        bloom[(p / 8) as usize] |= 1 << (p % 8);
    }
}

fn bloom_contains(bloom: &[u8], key: &Key) -> bool {
    let bits = (bloom.len() * 8) as u64;
    bits > 0 && probes(key, bits).all(|p| bloom[(p / 8) as usize] & (1 << (p % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> Key {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(n.to_le_bytes());
        let mut k = [0u8; KEY];
        k.copy_from_slice(&digest[..KEY]);
        k
    }

    fn value(n: u64) -> Value {
        let mut v = [0u8; VALUE];
        v[1..9].copy_from_slice(&n.to_be_bytes());
        v
    }

    fn feed(runs: &Arc<Runs>, from: u64, to: u64, batch: u64, version: u64) {
        let pairs: Vec<(Kind, Key, Value)> = (from..to)
            .map(|n| (Kind::Thread, key(n), value(n + version)))
            .collect();
        let log = Runs::log_entries(batch, &pairs);
        for (k, v) in &log {
            runs.log_tree().insert(k.as_slice(), v.as_slice()).unwrap();
        }
        runs.committed(&log, &pairs).unwrap();
    }

    #[test]
    fn every_pair_is_visited_from_runs_and_pending_each_key_newest_first() {
        let runs = Runs::open(&sled::Config::new().temporary(true).open().unwrap()).unwrap();
        let total = (RUN_PAIRS + 500) as u64;
        for (batch, start) in (0..total).step_by(1000).enumerate() {
            feed(&runs, start, (start + 1000).min(total), batch as u64, 0);
        }
        // Key 7 again, newer: pending while its older value sits in a run.
        feed(&runs, 7, 8, 9_999, 1_000_000);
        assert!(!runs.state.lock().runs.is_empty(), "a run was written");
        let mut seen: HashMap<Key, Vec<Value>> = HashMap::new();
        runs.for_each(Kind::Thread, &mut |k, v| {
            seen.entry(*k).or_default().push(*v);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), total as usize);
        assert_eq!(seen[&key(7)], [value(7 + 1_000_000), value(7)]);
        assert_eq!(seen[&key(total - 1)], [value(total - 1)]);
        let mut completions = 0;
        runs.for_each(Kind::Completion, &mut |_, _| {
            completions += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(completions, 0, "kinds are apart");
    }

    /// A database that outlives the `Runs` opened on it, to reopen them.
    fn lasting_db() -> (tempfile::TempDir, sled::Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path())
            .temporary(false)
            .open()
            .unwrap();
        (dir, db)
    }

    #[test]
    fn pairs_are_found_pending_in_runs_and_after_a_reopen_newest_value_winning() {
        let (_dir, db) = lasting_db();
        let runs = Runs::open(&db).unwrap();
        // Enough for a few runs, then the same keys again with new values.
        let total = (RUN_PAIRS * 3 + 3_000) as u64;
        for (batch, start) in (0..total).step_by(1000).enumerate() {
            feed(&runs, start, (start + 1000).min(total), batch as u64, 0);
        }
        feed(&runs, 0, 10, 9_999, 1_000_000);
        assert_eq!(
            runs.get(Kind::Thread, &key(5)).unwrap(),
            Some(value(5 + 1_000_000))
        );
        assert_eq!(runs.get(Kind::Thread, &key(20)).unwrap(), Some(value(20)));
        assert_eq!(
            runs.get(Kind::Thread, &key(total - 1)).unwrap(),
            Some(value(total - 1))
        );
        assert_eq!(runs.get(Kind::Thread, &key(total + 5)).unwrap(), None);
        assert_eq!(
            runs.get(Kind::Completion, &key(20)).unwrap(),
            None,
            "kinds are apart"
        );
        assert!(runs.state.lock().runs.len() >= 3);
        drop(runs);
        let runs = Runs::open(&db).unwrap();
        for n in [0, 5, 20, RUN_PAIRS as u64, total - 1] {
            let expected = if n < 10 {
                value(n + 1_000_000)
            } else {
                value(n)
            };
            assert_eq!(
                runs.get(Kind::Thread, &key(n)).unwrap(),
                Some(expected),
                "key {n}"
            );
        }
    }

    #[test]
    fn only_the_smallest_runs_are_merged_so_a_merge_holds_a_bounded_number_of_pairs() {
        let run = |rank: u64, count: u64| {
            Arc::new(Run {
                kind: Kind::Thread,
                rank,
                generation: 0,
                count,
                bloom: Vec::new(),
            })
        };
        let merged_once = (RUN_PAIRS * FANOUT) as u64;
        let large: Vec<_> = (0..FANOUT as u64 * 2)
            .map(|r| run(r, merged_once))
            .collect();
        assert!(large.iter().all(|r| r.tier() == 1));
        assert!(pick_merge(&large).is_none());
        let mut mixed = large.clone();
        mixed.extend((100..100 + FANOUT as u64).map(|r| run(r, RUN_PAIRS as u64)));
        let picked = pick_merge(&mixed).unwrap();
        assert_eq!(picked.len(), FANOUT);
        assert!(picked.iter().all(|r| r.tier() == 0));
    }

    fn wait_for_one_run(runs: &Runs) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while runs.state.lock().runs.len() > 1 || runs.state.lock().merging {
            assert!(
                std::time::Instant::now() < deadline,
                "the merge never finished"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn eight_runs_of_a_tier_merge_into_one_that_answers_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let runs = Runs::open(&db).unwrap();
        let per_run = RUN_PAIRS as u64;
        for r in 0..FANOUT as u64 {
            feed(&runs, r * per_run, (r + 1) * per_run, r, 0);
        }
        // A newer value for a key of the oldest run, in a ninth run's pending.
        feed(&runs, 3, 4, 100, 7);
        wait_for_one_run(&runs);
        assert_eq!(runs.get(Kind::Thread, &key(3)).unwrap(), Some(value(3 + 7)));
        for n in [0, per_run, 5 * per_run + 17, 8 * per_run - 1] {
            assert_eq!(
                runs.get(Kind::Thread, &key(n)).unwrap(),
                Some(value(n)),
                "key {n}"
            );
        }
        let chunks = runs.chunks.len();
        assert_eq!(
            chunks,
            (8 * per_run as usize).div_ceil(CHUNK_PAIRS),
            "old chunks removed"
        );
    }

    #[test]
    fn a_merge_keeps_the_newest_value_of_a_key_several_runs_hold() {
        let (_dir, db) = lasting_db();
        let runs = Runs::open(&db).unwrap();
        let (per_run, overlap, runs_made) = (RUN_PAIRS as u64, 100, FANOUT as u64);
        // Run r's first `overlap` keys are run r-1's last, with newer values.
        let first = |r: u64| r * (per_run - overlap);
        for r in 0..runs_made {
            feed(&runs, first(r), first(r) + per_run, r, r * 1_000_000);
        }
        wait_for_one_run(&runs);
        let distinct = runs_made * per_run - (runs_made - 1) * overlap;
        assert_eq!(runs.state.lock().runs[0].count, distinct);
        drop(runs);
        let runs = Runs::open(&db).unwrap();
        assert_eq!(runs.chunks.len(), (distinct as usize).div_ceil(CHUNK_PAIRS));
        for r in 1..runs_made {
            let (shared, older) = (first(r) + overlap / 2, first(r) - 1);
            assert_eq!(
                runs.get(Kind::Thread, &key(shared)).unwrap(),
                Some(value(shared + r * 1_000_000)),
                "key {shared}, in runs {} and {r}",
                r - 1
            );
            assert_eq!(
                runs.get(Kind::Thread, &key(older)).unwrap(),
                Some(value(older + (r - 1) * 1_000_000)),
                "key {older}, in run {} only",
                r - 1
            );
        }
    }

    #[test]
    fn the_filter_has_no_false_negatives_and_few_false_positives() {
        let keys: Vec<Key> = (0..10_000).map(key).collect();
        let bloom = bloom_of(keys.iter(), keys.len());
        assert!(keys.iter().all(|k| bloom_contains(&bloom, k)));
        let false_positives = (10_000..20_000)
            .filter(|n| bloom_contains(&bloom, &key(*n)))
            .count();
        assert!(false_positives < 300, "{false_positives} of 10,000");
    }
}
