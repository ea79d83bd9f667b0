//! The versions' experiment tallies, keyed `alias␟version␟live|shadow`.
//! A tally changes only under `tally_lock`, read-modify-write, inside the
//! same transaction as the records it counts, so the figures always agree
//! with what is stored.

use super::{LOCK_WAIT, busy};
use super::{SledStore, decode, encode, io};
use crate::store::{StoreError, TallyKey, VersionTally};
use parking_lot::MutexGuard;

const SEP: u8 = 0x1f;

/// A key and its encoded value, ready to write.
type Row = (Vec<u8>, Vec<u8>);

fn tally_key(key: &TallyKey) -> Vec<u8> {
    let kind: &[u8] = if key.shadow { b"shadow" } else { b"live" };
    [
        key.alias.as_bytes(),
        &[SEP],
        key.version.as_bytes(),
        &[SEP],
        kind,
    ]
    .concat()
}

impl SledStore {
    /// Waits for the lock at most [`LOCK_WAIT`], like every store lock.
    pub(super) fn lock_tallies(&self) -> Result<MutexGuard<'_, ()>, StoreError> {
        self.tally_lock
            .try_lock_for(LOCK_WAIT)
            .ok_or_else(|| busy("tallies"))
    }

    /// The stored tallies plus `deltas`, as (key, value) rows to write.
    /// The caller holds the tally lock until they are written.
    pub(super) fn merged_tallies(
        &self,
        deltas: &[(TallyKey, VersionTally)],
    ) -> Result<Vec<Row>, StoreError> {
        let mut merged: std::collections::BTreeMap<Vec<u8>, VersionTally> = Default::default();
        for (key, delta) in deltas {
            let k = tally_key(key);
            if !merged.contains_key(&k) {
                let stored = match self.experiment.get(&k).map_err(io)? {
                    Some(v) => decode("version tally", &v)?,
                    None => VersionTally::default(),
                };
                merged.insert(k.clone(), stored);
            }
            if let Some(t) = merged.get_mut(&k) {
                t.merge(delta);
            }
        }
        merged
            .into_iter()
            .map(|(k, t)| Ok((k, encode(&t)?)))
            .collect()
    }

    pub(super) fn tallies_of(
        &self,
        alias: &str,
    ) -> Result<Vec<(TallyKey, VersionTally)>, StoreError> {
        let prefix = [alias.as_bytes(), &[SEP]].concat();
        let mut out = Vec::new();
        for kv in self.experiment.scan_prefix(&prefix) {
            let (k, v) = kv.map_err(io)?;
            let rest = String::from_utf8_lossy(&k[prefix.len()..]).to_string();
            let Some((version, kind)) = rest.rsplit_once(SEP as char) else {
                continue;
            };
            let key = TallyKey {
                alias: alias.to_string(),
                version: version.to_string(),
                shadow: kind == "shadow",
            };
            out.push((key, decode("version tally", &v)?));
        }
        Ok(out)
    }

    pub(super) fn tally_row(
        &self,
        key: &TallyKey,
        delta: &VersionTally,
    ) -> Result<Row, StoreError> {
        self.merged_tallies(&[(key.clone(), delta.clone())])?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Io("no tally row".into()))
    }
}
