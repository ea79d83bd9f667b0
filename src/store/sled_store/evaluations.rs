//! Offline evaluations: the run by id; each example's result keyed
//! `evaluation_id␟version␟index` (zero-padded, so one run's results are
//! one prefix range in order); performance figures keyed
//! `alias␟evaluation_id␟version␟metric`, so one alias's history is one
//! prefix range, oldest first (evaluation ids are time-ordered).

use super::{SledStore, decode, encode, io};
use crate::store::{EvaluationRecord, ExampleResult, PerformanceRecord, StoreError};
use sled::Transactional;

const SEP: u8 = 0x1f;

fn key(parts: &[&str]) -> Vec<u8> {
    parts.iter().fold(Vec::new(), |mut k, part| {
        if !k.is_empty() {
            k.push(SEP);
        }
        k.extend_from_slice(part.as_bytes());
        k
    })
}

fn prefix(parts: &[&str]) -> Vec<u8> {
    let mut k = key(parts);
    k.push(SEP);
    k
}

fn result_key(r: &ExampleResult) -> Vec<u8> {
    key(&[&r.evaluation_id, &r.version, &format!("{:012}", r.index)])
}

fn performance_key(p: &PerformanceRecord) -> Vec<u8> {
    key(&[&p.alias, &p.evaluation_id, &p.version, &p.metric])
}

type TxError = sled::transaction::ConflictableTransactionError<()>;

impl SledStore {
    pub(super) fn write_evaluation(&self, record: &EvaluationRecord) -> Result<(), StoreError> {
        self.evaluations
            .insert(record.id.as_bytes(), encode(record)?)
            .map_err(io)?;
        self.db.flush().map(drop).map_err(io)
    }

    pub(super) fn read_evaluation(&self, id: &str) -> Result<Option<EvaluationRecord>, StoreError> {
        self.evaluations
            .get(id.as_bytes())
            .map_err(io)?
            .map(|v| decode("evaluation", &v))
            .transpose()
    }

    /// Newest first, after `cursor` (an evaluation id), those `keep` accepts.
    pub(super) fn list_evaluations(
        &self,
        cursor: Option<&str>,
        limit: usize,
        keep: &dyn Fn(&EvaluationRecord) -> bool,
    ) -> Result<Vec<EvaluationRecord>, StoreError> {
        let range = match cursor {
            Some(c) => self.evaluations.range(..c.as_bytes().to_vec()),
            None => self.evaluations.range::<Vec<u8>, _>(..),
        };
        let mut out = Vec::new();
        for kv in range.rev() {
            let record: EvaluationRecord = decode("evaluation", &kv.map_err(io)?.1)?;
            if keep(&record) {
                out.push(record);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The result and the run's progress together, so progress never
    /// counts a result that is not there. Not flushed: sled's own flush
    /// (and the one at shutdown) makes it durable, and a result lost in a
    /// crash is only asked again.
    pub(super) fn write_example_result(
        &self,
        result: &ExampleResult,
        progress: &EvaluationRecord,
    ) -> Result<(), StoreError> {
        let (value, run) = (encode(result)?, encode(progress)?);
        let result_key = result_key(result);
        (&self.evaluation_examples, &self.evaluations)
            .transaction(|(examples, runs)| {
                examples.insert(result_key.as_slice(), value.as_slice())?;
                runs.insert(progress.id.as_bytes(), run.as_slice())?;
                Ok::<(), TxError>(())
            })
            .map_err(|e| StoreError::Io(format!("evaluation transaction failed: {e:?}")))
    }

    pub(super) fn read_example_results(
        &self,
        evaluation_id: &str,
    ) -> Result<Vec<ExampleResult>, StoreError> {
        self.evaluation_examples
            .scan_prefix(prefix(&[evaluation_id]))
            .values()
            .map(|v| decode("evaluation example", &v.map_err(io)?))
            .collect()
    }

    pub(super) fn write_finished_evaluation(
        &self,
        record: &EvaluationRecord,
        performance: &[PerformanceRecord],
    ) -> Result<(), StoreError> {
        let run = encode(record)?;
        let rows = performance
            .iter()
            .map(|p| Ok((performance_key(p), encode(p)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        (&self.evaluations, &self.performance)
            .transaction(|(runs, figures)| {
                runs.insert(record.id.as_bytes(), run.as_slice())?;
                for (k, v) in &rows {
                    figures.insert(k.as_slice(), v.as_slice())?;
                }
                Ok::<(), TxError>(())
            })
            .map_err(|e| StoreError::Io(format!("evaluation transaction failed: {e:?}")))?;
        self.db.flush().map(drop).map_err(io)
    }

    /// Oldest first.
    pub(super) fn read_performance(
        &self,
        alias: &str,
    ) -> Result<Vec<PerformanceRecord>, StoreError> {
        self.performance
            .scan_prefix(prefix(&[alias]))
            .values()
            .map(|v| decode("performance", &v.map_err(io)?))
            .collect()
    }
}
