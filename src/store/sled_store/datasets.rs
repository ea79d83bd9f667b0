//! Dataset snapshots: the record by id, its JSONL files keyed `id/split`,
//! written together once and never changed.

use super::{SledStore, decode, encode, io};
use crate::store::{DatasetRecord, DatasetSplit, StoreError};
use sled::Transactional;

impl SledStore {
    pub(super) fn write_dataset(
        &self,
        record: &DatasetRecord,
        train: &[u8],
        validation: &[u8],
    ) -> Result<(), StoreError> {
        let value = encode(record)?;
        let key = |split: DatasetSplit| format!("{}/{}", record.id, split.as_str());
        (&self.datasets, &self.dataset_files)
            .transaction(|(datasets, files)| {
                datasets.insert(record.id.as_bytes(), value.as_slice())?;
                files.insert(key(DatasetSplit::Train).as_bytes(), train)?;
                files.insert(key(DatasetSplit::Validation).as_bytes(), validation)?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StoreError::Io(format!("dataset transaction failed: {e:?}")))?;
        self.db.flush().map(drop).map_err(io)
    }

    pub(super) fn read_dataset(&self, id: &str) -> Result<Option<DatasetRecord>, StoreError> {
        self.datasets
            .get(id.as_bytes())
            .map_err(io)?
            .map(|v| decode("dataset", &v))
            .transpose()
    }

    /// Newest first, after `cursor` (a dataset id).
    pub(super) fn list_datasets(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DatasetRecord>, StoreError> {
        let range = match cursor {
            Some(c) => self.datasets.range(..c.as_bytes().to_vec()),
            None => self.datasets.range::<Vec<u8>, _>(..),
        };
        range
            .rev()
            .take(limit)
            .map(|kv| decode("dataset", &kv.map_err(io)?.1))
            .collect()
    }

    pub(super) fn read_dataset_file(
        &self,
        id: &str,
        split: DatasetSplit,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .dataset_files
            .get(format!("{id}/{}", split.as_str()).as_bytes())
            .map_err(io)?
            .map(|v| v.to_vec()))
    }
}
