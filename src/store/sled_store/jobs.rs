//! Fine-tuning jobs: the record by id, and the ids of the jobs still in
//! flight in a tree of their own, changed in the same transaction, so the
//! poller reads only those.

use super::{SledStore, decode, encode, io};
use crate::store::{FineTuneJobRecord, StoreError};
use sled::Transactional;

impl SledStore {
    pub(super) fn write_job(&self, record: &FineTuneJobRecord) -> Result<(), StoreError> {
        let value = encode(record)?;
        let done = record.status.is_final();
        (&self.fine_tuning_jobs, &self.jobs_in_flight)
            .transaction(|(jobs, in_flight)| {
                jobs.insert(record.id.as_bytes(), value.as_slice())?;
                if done {
                    in_flight.remove(record.id.as_bytes())?;
                } else {
                    in_flight.insert(record.id.as_bytes(), &[])?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StoreError::Io(format!("job transaction failed: {e:?}")))?;
        self.db.flush().map(drop).map_err(io)
    }

    pub(super) fn read_job(&self, id: &str) -> Result<Option<FineTuneJobRecord>, StoreError> {
        self.fine_tuning_jobs
            .get(id.as_bytes())
            .map_err(io)?
            .map(|v| decode("fine-tuning job", &v))
            .transpose()
    }

    /// Newest first, after `cursor` (a job id).
    pub(super) fn list_jobs(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FineTuneJobRecord>, StoreError> {
        let range = match cursor {
            Some(c) => self.fine_tuning_jobs.range(..c.as_bytes().to_vec()),
            None => self.fine_tuning_jobs.range::<Vec<u8>, _>(..),
        };
        range
            .rev()
            .take(limit)
            .map(|kv| decode("fine-tuning job", &kv.map_err(io)?.1))
            .collect()
    }

    /// Oldest first.
    pub(super) fn jobs_not_finished(&self) -> Result<Vec<FineTuneJobRecord>, StoreError> {
        let mut out = Vec::new();
        for id in self.jobs_in_flight.iter().keys() {
            let id = id.map_err(io)?;
            out.extend(self.read_job(&String::from_utf8_lossy(&id))?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::sled_store::tests::reopen;
    use crate::store::{FineTuneJobRecord, JobStatus, SledStore, Store};

    fn job(id: &str) -> FineTuneJobRecord {
        FineTuneJobRecord {
            id: id.into(),
            alias: "triage".into(),
            model_type: "threat_detection".into(),
            dataset_id: "ds_1".into(),
            provider: "sim".into(),
            base_model: "gpt-4o-mini".into(),
            method: "supervised".into(),
            hyperparameters: Default::default(),
            suffix: None,
            seed: None,
            metadata: Default::default(),
            status: JobStatus::Preparing,
            provider_job_id: None,
            provider_files: Default::default(),
            trained_tokens: None,
            fine_tuned_model: None,
            registered_version: None,
            error: None,
            events: Vec::new(),
            metrics: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            approved_at_start: None,
            created_by: "key_1".into(),
            finished_at: None,
            last_provider_event: None,
            attempts: Default::default(),
            deployment: None,
            trainer: None,
        }
    }

    #[test]
    fn jobs_in_flight_are_those_not_finished_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            for id in ["job_1", "job_2", "job_3"] {
                s.put_job(&job(id)).unwrap();
            }
            s.put_job(&FineTuneJobRecord {
                status: JobStatus::Succeeded,
                ..job("job_2")
            })
            .unwrap();
        }
        let s = reopen(dir.path());
        let ids = |jobs: Vec<FineTuneJobRecord>| jobs.into_iter().map(|j| j.id).collect::<Vec<_>>();
        assert_eq!(ids(s.jobs_in_flight().unwrap()), ["job_1", "job_3"]);
        assert_eq!(ids(s.jobs(None, 10).unwrap()), ["job_3", "job_2", "job_1"]);
        assert_eq!(ids(s.jobs(Some("job_3"), 1).unwrap()), ["job_2"]);
        assert_eq!(
            s.job("job_2").unwrap().unwrap().status,
            JobStatus::Succeeded
        );
        assert!(s.job("job_9").unwrap().is_none());
    }
}
