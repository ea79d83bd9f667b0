//! Opening a store written by an earlier release. Layout 1 kept every
//! record as JSON under its id string and one index entry per listed value
//! per conversation; layout 2 kept each inference record compressed under
//! its own key; layout 3 (this one, see the module above) also writes
//! them several to a sled value (`groups`). A layout-1 store is rewritten
//! in place the first time it is opened: every conversation, inference,
//! thread key and completion id is carried over, listings and tallies are
//! rebuilt, and only then are the old trees dropped — a migration cut
//! short starts again from the old trees on the next open. A layout-2
//! store is already a layout-3 store whose records are all alone: only
//! its layout is recorded. A store of a newer layout is refused, not
//! read in part.

use super::postings::{self, Entry, Posting};
use super::runs::{Kind, Runs};
use super::{SledStore, capture, codec, decode, encode, io};
use crate::store::{
    ConversationRecord, ConversationTallies, InferenceRecord, Position, StoreError, ThreadPoint,
};
use std::collections::BTreeMap;
use std::sync::Arc;

const LAYOUT: &[u8] = b"store_layout";
const CURRENT: &str = "3";
/// The layouts of earlier releases this one opens.
const EARLIER: [&[u8]; 1] = [b"2"];
/// Layout 1's trees, dropped once their contents are carried over.
const OLD_TREES: [&str; 5] = [
    "inferences",
    "inferences_by_completion",
    "conversations",
    "threads",
    "conversation_index",
];
/// Conversations per listing block, as a capture batch would hold them.
const BLOCK: usize = 512;
/// Writes gathered before they are applied.
const WRITE_BATCH: usize = 1_000;

impl SledStore {
    /// Brings the store to the current layout; a new store just records it.
    pub(super) fn migrate(&self, dir: &std::path::Path) -> Result<(), StoreError> {
        let layout = self.meta.get(LAYOUT).map_err(io)?;
        // Layout 1 recorded none.
        if let Some(newer) = layout
            .as_deref()
            .filter(|l| *l != CURRENT.as_bytes() && !EARLIER.contains(l))
        {
            return Err(StoreError::NewerLayout {
                path: dir.display().to_string(),
                layout: String::from_utf8_lossy(newer).into_owned(),
                known: CURRENT,
            });
        }
        if layout.as_deref() != Some(CURRENT.as_bytes()) {
            let old = self.db.open_tree("conversations").map_err(io)?;
            let old_inferences = self.db.open_tree("inferences").map_err(io)?;
            if !old.is_empty() || !old_inferences.is_empty() {
                self.migrate_from_layout_1()?;
            }
            self.meta.insert(LAYOUT, CURRENT.as_bytes()).map_err(io)?;
            self.db.flush().map_err(io)?;
            for name in OLD_TREES {
                self.db.drop_tree(name).map_err(io)?;
            }
        }
        // Batch ids go on from the newest stored, even if the clock went back.
        if let Some(last) = self
            .postings
            .scan_prefix(postings::prefix(&postings::all()))
            .keys()
            .next_back()
        {
            let last = postings::batch_of(&last.map_err(io)?);
            self.last_batch
                .fetch_max(last, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    fn migrate_from_layout_1(&self) -> Result<(), StoreError> {
        let old = |name: &str| self.db.open_tree(name).map_err(io);
        let (conversations, inferences) = (old("conversations")?, old("inferences")?);
        let (threads, completions) = (old("threads")?, old("inferences_by_completion")?);
        tracing::info!(
            conversations = conversations.len(),
            inferences = inferences.len(),
            "migrating the store to layout 2 (compressed records); this runs once"
        );
        // A migration cut short left some of the new trees written.
        for tree in [
            &self.inferences,
            &self.conversations,
            &self.slots,
            &self.postings,
        ] {
            tree.clear().map_err(io)?;
        }
        let runs = self.runs.clone();
        runs.clear()?;
        let mut pairs = Pairs::new(runs.clone());
        let mut listed: Vec<(u64, String, Vec<u8>)> = Vec::new();
        let mut tallies = ConversationTallies::default();
        let mut writes = Writes::default();
        for value in conversations.iter().values() {
            let c: ConversationRecord = decode("conversation", &value.map_err(io)?)?;
            listed.push((postings::created_ms(&c, &[]), c.id.clone(), Vec::new()));
        }
        listed.sort();
        let mut blocks: BTreeMap<(Posting, u64), Vec<Entry>> = BTreeMap::new();
        let mut batch = 0u64;
        for (n, (created, id, _)) in listed.iter().enumerate() {
            let Some(bytes) = conversations.get(id.as_bytes()).map_err(io)? else {
                continue;
            };
            let mut c: ConversationRecord = decode("conversation", &bytes)?;
            if n % BLOCK == 0 {
                // The block's batch: the newest creation time it will hold.
                let last = listed[(n + BLOCK).min(listed.len()) - 1].0;
                batch = postings::batch_at(last).max(batch + 1);
            }
            let slot = match codec::ulid_of(&c.id) {
                Some(ulid) => codec::ulid_key(ulid),
                None => {
                    // Ulid::default() is the nil id: a fresh one is needed.
                    let slot = match c.inference_ids.first().and_then(|i| codec::ulid_of(i)) {
                        Some(first) => codec::ulid_key(first),
                        None => codec::ulid_key(ulid::Ulid::new()),
                    };
                    writes.put(&self.slots, c.id.as_bytes(), slot.clone())?;
                    slot
                }
            };
            let position = Position(batch, (n % BLOCK) as u32);
            c.position = Some(position);
            for p in postings::postings(&c) {
                blocks
                    .entry((p, batch))
                    .or_default()
                    .push(Entry::new(position, *created, &slot));
            }
            if let (Some(text), None) = (&c.signals.text_hash, &c.signals.duplicate_of)
                && let Ok(value) = slot.as_slice().try_into()
            {
                pairs.add(Kind::Text, capture::hashed(text), value)?;
            }
            for (turn, inference_id) in c.inference_ids.iter().enumerate() {
                if let Some(bytes) = inferences.get(inference_id.as_bytes()).map_err(io)? {
                    let mut record: InferenceRecord = decode("inference", &bytes)?;
                    record.turn = Some(turn);
                    writes.put(
                        &self.inferences,
                        &codec::id_key(inference_id),
                        codec::encode(&record)?,
                    )?;
                }
            }
            tallies.count(&c, 1);
            writes.put(&self.conversations, &slot, codec::encode(&c)?)?;
        }
        for ((posting, batch), entries) in blocks {
            writes.put(
                &self.postings,
                &postings::block_key(&posting, batch),
                postings::encode_block(&entries),
            )?;
        }
        writes.apply()?;
        // Shadows' answers and anything else no conversation lists.
        for kv in inferences.iter() {
            let (id, bytes) = kv.map_err(io)?;
            let key = codec::id_key(&String::from_utf8_lossy(&id));
            if !self.inferences.contains_key(&key).map_err(io)? {
                let record: InferenceRecord = decode("inference", &bytes)?;
                writes.put(&self.inferences, &key, codec::encode(&record)?)?;
            }
        }
        writes.apply()?;
        for kv in threads.iter() {
            let (key, bytes) = kv.map_err(io)?;
            let point: ThreadPoint = decode("thread", &bytes)?;
            self.carry_thread(
                &String::from_utf8_lossy(&key),
                &point,
                &mut pairs,
                &mut writes,
            )?;
        }
        writes.apply()?;
        for kv in completions.iter() {
            let (completion, id) = kv.map_err(io)?;
            if let Ok(value) = codec::id_key(&String::from_utf8_lossy(&id))
                .as_slice()
                .try_into()
            {
                pairs.add(
                    Kind::Completion,
                    capture::hashed(&String::from_utf8_lossy(&completion)),
                    value,
                )?;
            }
        }
        pairs.finish()?;
        self.meta
            .insert(super::conversations::TALLIES, encode(&tallies)?)
            .map_err(io)?;
        tracing::info!("store migrated to layout 2");
        Ok(())
    }

    /// A layout-1 thread point as a lookup pair; its sticky key goes onto
    /// the inference it points at.
    fn carry_thread(
        &self,
        key: &str,
        point: &ThreadPoint,
        pairs: &mut Pairs,
        writes: &mut Writes,
    ) -> Result<(), StoreError> {
        let Some(lookup) = capture::thread_key(key) else {
            return Ok(());
        };
        let Some(c) = self.conversation_record(&point.conversation_id)? else {
            return Ok(());
        };
        let Some(inference_id) = c.inference_ids.get(point.turn) else {
            return Ok(());
        };
        let at = codec::id_key(inference_id);
        if let Some(sticky) = &point.sticky
            && let Some(mut record) = self.inference_at(&at)?
        {
            record.sticky = Some(sticky.clone());
            writes.put(&self.inferences, &at, codec::encode(&record)?)?;
        }
        if let Ok(value) = at.as_slice().try_into() {
            pairs.add(Kind::Thread, lookup, value)?;
        }
        Ok(())
    }
}

/// Writes to several trees, applied a thousand at a time.
#[derive(Default)]
struct Writes {
    pending: Vec<(sled::Tree, Vec<u8>, Vec<u8>)>,
}

impl Writes {
    fn put(&mut self, tree: &sled::Tree, key: &[u8], value: Vec<u8>) -> Result<(), StoreError> {
        self.pending.push((tree.clone(), key.to_vec(), value));
        if self.pending.len() >= WRITE_BATCH {
            self.apply()?;
        }
        Ok(())
    }

    fn apply(&mut self) -> Result<(), StoreError> {
        for (tree, key, value) in self.pending.drain(..) {
            tree.insert(key, value).map_err(io)?;
        }
        Ok(())
    }
}

/// Lookup pairs fed to the runs as they come.
struct Pairs {
    runs: Arc<Runs>,
    pending: Vec<(Kind, [u8; 16], [u8; 17])>,
}

impl Pairs {
    fn new(runs: Arc<Runs>) -> Self {
        Self {
            runs,
            pending: Vec::new(),
        }
    }

    fn add(&mut self, kind: Kind, key: [u8; 16], value: [u8; 17]) -> Result<(), StoreError> {
        self.pending.push((kind, key, value));
        if self.pending.len() >= WRITE_BATCH {
            self.runs
                .committed(&[], &std::mem::take(&mut self.pending))?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), StoreError> {
        self.runs
            .committed(&[], &std::mem::take(&mut self.pending))?;
        self.runs.flush_all()
    }
}
