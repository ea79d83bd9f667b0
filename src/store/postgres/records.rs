//! The small tables: keys, audit, registry and history, alerts and their
//! queued webhook deliveries, version
//! tallies, datasets and their files, fine-tuning jobs, evaluations with
//! their results and performance, leases. Each record is one row; a change
//! of registry or keys is announced on the change feed in its transaction.

use super::feed::{Change, notify};
use super::{PgStore, db_error, from_json, pool_error, records, to_json};
use crate::store::{
    AlertRecord, ApiKeyRecord, AuditRecord, DatasetRecord, DatasetSplit, EvaluationRecord,
    ExampleResult, FineTuneJobRecord, ModelAliasRecord, ModelHistoryRecord, PerformanceRecord,
    QueuedWebhook, StoreError, TallyKey, VersionTally,
};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Rows read per round trip when a listing filters in the caller.
const CHUNK: i64 = 200;

impl PgStore {
    pub(super) fn write_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let key = key.clone();
        let record = to_json(&key)?;
        self.call(move |ctx| async move {
            let mut client = ctx.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(db_error)?;
            tx.execute(
                "INSERT INTO api_keys (id, name, role, hash, created_at, revoked_at, record)
                 VALUES ($1, $2, $3, $4, $5, $6, $7::text::json)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name, role = excluded.role,
                   hash = excluded.hash, revoked_at = excluded.revoked_at, record = excluded.record",
                &[
                    &key.id,
                    &key.name,
                    &key.role,
                    &key.hash,
                    &key.created_at,
                    &key.revoked_at,
                    &record,
                ],
            )
            .await
            .map_err(db_error)?;
            notify(&tx, &ctx.channel, Change::Keys).await?;
            tx.commit().await.map_err(db_error)
        })
    }

    pub(super) fn read_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.select_records("key", "SELECT record::text FROM api_keys ORDER BY id", None)
    }

    pub(super) fn write_revocation(&self, id: &str, at: &str) -> Result<ApiKeyRecord, StoreError> {
        let (id, at) = (id.to_string(), at.to_string());
        self.call(move |ctx| async move {
            let mut client = ctx.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(db_error)?;
            let Some(row) = tx
                .query_opt(
                    "SELECT record::text FROM api_keys WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .await
                .map_err(db_error)?
            else {
                return Err(StoreError::NotFound);
            };
            let mut record: ApiKeyRecord = from_json("key", row.get(0))?;
            if record.revoked_at.is_none() {
                record.revoked_at = Some(at);
                tx.execute(
                    "UPDATE api_keys SET revoked_at = $2, record = $3::text::json WHERE id = $1",
                    &[&id, &record.revoked_at, &to_json(&record)?],
                )
                .await
                .map_err(db_error)?;
                notify(&tx, &ctx.channel, Change::Keys).await?;
            }
            tx.commit().await.map_err(db_error)?;
            Ok(record)
        })
    }

    pub(super) fn write_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let r = record.clone();
        let json = to_json(&r)?;
        self.call(move |ctx| async move {
            let client = ctx.pool.get().await.map_err(pool_error)?;
            client
                .execute(
                    "INSERT INTO audit (id, at, actor, action, target, record)
                     VALUES ($1, $2, $3, $4, $5, $6::text::json)
                     ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                    &[&r.id, &r.at, &r.actor, &r.action, &r.target, &json],
                )
                .await
                .map_err(db_error)?;
            Ok(())
        })
    }

    pub(super) fn read_audit(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.newest_kept("audit", "audit", cursor, limit, &|_| true)
    }

    /// Newest first (ids sort by time), after `cursor`, up to `limit`
    /// records `keep` accepts; read in chunks, filtered here.
    pub(super) fn newest_kept<T: DeserializeOwned + Send + 'static>(
        &self,
        table: &'static str,
        what: &'static str,
        cursor: Option<&str>,
        limit: usize,
        keep: &dyn Fn(&T) -> bool,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        let mut after = cursor.map(str::to_string);
        while out.len() < limit {
            let from = after.clone();
            let chunk: Vec<(String, T)> = self.call(move |ctx| async move {
                let client = ctx.pool.get().await.map_err(pool_error)?;
                let sql = format!(
                    "SELECT id, record::text FROM {table}
                     WHERE ($1::text IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"
                );
                let rows = client
                    .query(&sql, &[&from, &CHUNK])
                    .await
                    .map_err(db_error)?;
                rows.iter()
                    .map(|row| Ok((row.get(0), from_json(what, row.get::<_, &str>(1))?)))
                    .collect()
            })?;
            let exhausted = (chunk.len() as i64) < CHUNK;
            for (id, record) in chunk {
                after = Some(id);
                if out.len() < limit && keep(&record) {
                    out.push(record);
                }
            }
            if exhausted {
                break;
            }
        }
        Ok(out)
    }

    pub(super) fn read_by_id<T: DeserializeOwned + Send + 'static>(
        &self,
        table: &'static str,
        what: &'static str,
        id: &str,
    ) -> Result<Option<T>, StoreError> {
        let id = id.to_string();
        self.call(move |ctx| async move {
            let client = ctx.pool.get().await.map_err(pool_error)?;
            let sql = format!("SELECT record::text FROM {table} WHERE id = $1");
            let row = client.query_opt(&sql, &[&id]).await.map_err(db_error)?;
            row.map(|r| from_json(what, r.get::<_, &str>(0)))
                .transpose()
        })
    }

    pub(super) fn read_version_tallies(
        &self,
        alias: &str,
    ) -> Result<Vec<(TallyKey, VersionTally)>, StoreError> {
        let alias = alias.to_string();
        self.call(move |ctx| async move {
            let client = ctx.pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    "SELECT version, arm, tally::text FROM version_tallies
                     WHERE alias = $1 ORDER BY version, arm",
                    &[&alias],
                )
                .await
                .map_err(db_error)?;
            rows.iter()
                .map(|row| {
                    let key = TallyKey {
                        alias: alias.clone(),
                        version: row.get(0),
                        shadow: row.get::<_, &str>(1) == "shadow",
                    };
                    Ok((key, from_json("version tally", row.get::<_, &str>(2))?))
                })
                .collect()
        })
    }

    pub(super) fn read_model_aliases(&self) -> Result<Vec<ModelAliasRecord>, StoreError> {
        self.select_records(
            "model alias",
            "SELECT record::text FROM model_aliases ORDER BY alias",
            None,
        )
    }

    pub(super) fn write_model_alias(
        &self,
        record: &ModelAliasRecord,
        history: &ModelHistoryRecord,
    ) -> Result<(), StoreError> {
        let (alias, history_id, history_alias) = (
            record.alias.clone(),
            history.id.clone(),
            history.alias.clone(),
        );
        let (value, entry) = (to_json(record)?, to_json(history)?);
        self.call(move |ctx| async move {
            let mut client = ctx.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(db_error)?;
            // Written only over an older revision: a replica whose copy
            // was stale (another changed the alias a moment ago) is
            // refused, not allowed to undo that change. Writing the same
            // record again is a no-op.
            let written = tx
                .execute(
                    "INSERT INTO model_aliases (alias, record) VALUES ($1, $2::text::json)
                     ON CONFLICT (alias) DO UPDATE SET record = excluded.record
                     WHERE (model_aliases.record->>'revision')::bigint
                         < (excluded.record->>'revision')::bigint",
                    &[&alias, &value],
                )
                .await
                .map_err(db_error)?;
            if written == 0 {
                let stored: String = tx
                    .query_one(
                        "SELECT record::text FROM model_aliases WHERE alias = $1",
                        &[&alias],
                    )
                    .await
                    .map_err(db_error)?
                    .get(0);
                let same = serde_json::from_str::<serde_json::Value>(&stored).ok()
                    == serde_json::from_str::<serde_json::Value>(&value).ok();
                if !same {
                    return Err(StoreError::Unavailable(format!(
                        "model alias `{alias}` was changed by another replica a moment ago; retry"
                    )));
                }
            }
            tx.execute(
                "INSERT INTO model_history (id, alias, record) VALUES ($1, $2, $3::text::json)
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                &[&history_id, &history_alias, &entry],
            )
            .await
            .map_err(db_error)?;
            notify(&tx, &ctx.channel, Change::Registry).await?;
            tx.commit().await.map_err(db_error)
        })
    }

    pub(super) fn read_model_history(
        &self,
        alias: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ModelHistoryRecord>, StoreError> {
        let (alias, cursor) = (alias.to_string(), cursor.map(str::to_string));
        let limit = limit as i64;
        self.call(move |ctx| async move {
            let client = ctx.pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    "SELECT record::text FROM model_history
                     WHERE alias = $1 AND ($2::text IS NULL OR id < $2)
                     ORDER BY id DESC LIMIT $3",
                    &[&alias, &cursor, &limit],
                )
                .await
                .map_err(db_error)?;
            records("model history", &rows)
        })
    }

    /// The alert, with its webhook delivery queued when one is given, in
    /// one transaction.
    pub(super) fn write_alert(
        &self,
        alert: &AlertRecord,
        webhook: Option<&QueuedWebhook>,
    ) -> Result<(), StoreError> {
        let (id, value) = (alert.id.clone(), to_json(alert)?);
        let webhook = webhook.cloned();
        self.call(move |ctx| async move {
            let mut client = ctx.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(db_error)?;
            tx.execute(
                "INSERT INTO alerts (id, record) VALUES ($1, $2::text::json)
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                &[&id, &value],
            )
            .await
            .map_err(db_error)?;
            if let Some(w) = webhook {
                upsert_webhook(&tx, &w).await?;
            }
            tx.commit().await.map_err(db_error)
        })
    }

    pub(super) fn read_webhooks(&self, limit: usize) -> Result<Vec<QueuedWebhook>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |ctx| async move {
            let client = ctx.pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    "SELECT alert_id, attempts, next_attempt_ms FROM alert_webhooks
                     ORDER BY alert_id LIMIT $1",
                    &[&limit],
                )
                .await
                .map_err(db_error)?;
            Ok(rows
                .iter()
                .map(|row| QueuedWebhook {
                    alert_id: row.get(0),
                    attempts: u32::try_from(row.get::<_, i32>(1)).unwrap_or(0),
                    next_attempt_ms: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
                })
                .collect())
        })
    }

    pub(super) fn write_webhook(&self, webhook: &QueuedWebhook) -> Result<(), StoreError> {
        let webhook = webhook.clone();
        self.call(move |ctx| async move {
            let client = ctx.pool.get().await.map_err(pool_error)?;
            upsert_webhook(&client, &webhook).await
        })
    }

    pub(super) fn delete_webhook(&self, alert_id: &str) -> Result<(), StoreError> {
        let alert_id = alert_id.to_string();
        self.call(move |ctx| async move {
            let client = ctx.pool.get().await.map_err(pool_error)?;
            client
                .execute(
                    "DELETE FROM alert_webhooks WHERE alert_id = $1",
                    &[&alert_id],
                )
                .await
                .map_err(db_error)?;
            Ok(())
        })
    }

    pub(super) fn read_alert(&self, id: &str) -> Result<Option<AlertRecord>, StoreError> {
        self.read_by_id("alerts", "alert", id)
    }

    pub(super) fn write_dataset(
        &self,
        record: &DatasetRecord,
        train: &[u8],
        validation: &[u8],
    ) -> Result<(), StoreError> {
        let r = record.clone();
        let value = to_json(&r)?;
        let (train, validation) = (train.to_vec(), validation.to_vec());
        self.call(move |ctx| async move {
            let mut client = ctx.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(db_error)?;
            tx.execute(
                "INSERT INTO datasets (id, name, format, created_at, record)
                 VALUES ($1, $2, $3, $4, $5::text::json)
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                &[&r.id, &r.name, &r.format, &r.created_at, &value],
            )
            .await
            .map_err(db_error)?;
            for (split, body) in [
                (DatasetSplit::Train, &train),
                (DatasetSplit::Validation, &validation),
            ] {
                tx.execute(
                    "INSERT INTO dataset_files (dataset_id, split, body) VALUES ($1, $2, $3)
                     ON CONFLICT (dataset_id, split) DO UPDATE SET body = excluded.body",
                    &[&r.id, &split.as_str(), body],
                )
                .await
                .map_err(db_error)?;
            }
            tx.commit().await.map_err(db_error)
        })
    }

    pub(super) fn read_dataset_file(
        &self,
        id: &str,
        split: DatasetSplit,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let id = id.to_string();
        self.call(move |ctx| async move {
            let client = ctx.pool.get().await.map_err(pool_error)?;
            let row = client
                .query_opt(
                    "SELECT body FROM dataset_files WHERE dataset_id = $1 AND split = $2",
                    &[&id, &split.as_str()],
                )
                .await
                .map_err(db_error)?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    pub(super) fn write_job(&self, record: &FineTuneJobRecord) -> Result<(), StoreError> {
        let (id, alias) = (record.id.clone(), record.alias.clone());
        let status = serde_json::to_value(record.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let in_flight = !record.status.is_final();
        let value = to_json(record)?;
        self.call(move |ctx| async move {
            let client = ctx.pool.get().await.map_err(pool_error)?;
            client
                .execute(
                    "INSERT INTO fine_tuning_jobs (id, alias, status, in_flight, record)
                     VALUES ($1, $2, $3, $4, $5::text::json)
                     ON CONFLICT (id) DO UPDATE SET status = excluded.status,
                       in_flight = excluded.in_flight, record = excluded.record",
                    &[&id, &alias, &status, &in_flight, &value],
                )
                .await
                .map_err(db_error)?;
            Ok(())
        })
    }

    pub(super) fn read_jobs_in_flight(&self) -> Result<Vec<FineTuneJobRecord>, StoreError> {
        self.select_records(
            "fine-tuning job",
            "SELECT record::text FROM fine_tuning_jobs WHERE in_flight ORDER BY id",
            None,
        )
    }

    pub(super) fn write_evaluation(&self, record: &EvaluationRecord) -> Result<(), StoreError> {
        let (id, value) = (record.id.clone(), to_json(record)?);
        self.call(move |ctx| async move {
            let client = ctx.pool.get().await.map_err(pool_error)?;
            upsert_evaluation(&client, &id, &value).await
        })
    }

    pub(super) fn write_example_result(
        &self,
        result: &ExampleResult,
        progress: &EvaluationRecord,
    ) -> Result<(), StoreError> {
        let (evaluation, version, index) = (
            result.evaluation_id.clone(),
            result.version.clone(),
            result.index as i64,
        );
        let (value, run_id, run) = (to_json(result)?, progress.id.clone(), to_json(progress)?);
        self.call(move |ctx| async move {
            let mut client = ctx.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(db_error)?;
            tx.execute(
                "INSERT INTO evaluation_examples (evaluation_id, version, example_index, record)
                 VALUES ($1, $2, $3, $4::text::json)
                 ON CONFLICT (evaluation_id, version, example_index)
                 DO UPDATE SET record = excluded.record",
                &[&evaluation, &version, &index, &value],
            )
            .await
            .map_err(db_error)?;
            upsert_evaluation(&tx, &run_id, &run).await?;
            tx.commit().await.map_err(db_error)
        })
    }

    pub(super) fn read_example_results(
        &self,
        evaluation_id: &str,
    ) -> Result<Vec<ExampleResult>, StoreError> {
        let id = evaluation_id.to_string();
        self.select_records(
            "evaluation example",
            "SELECT record::text FROM evaluation_examples WHERE evaluation_id = $1
                     ORDER BY version, example_index",
            Some(id),
        )
    }

    pub(super) fn write_finished_evaluation(
        &self,
        record: &EvaluationRecord,
        performance: &[PerformanceRecord],
    ) -> Result<(), StoreError> {
        let (id, run) = (record.id.clone(), to_json(record)?);
        let figures = performance
            .iter()
            .map(|p| {
                Ok((
                    p.alias.clone(),
                    p.evaluation_id.clone(),
                    p.version.clone(),
                    p.metric.clone(),
                    to_json(p)?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.call(move |ctx| async move {
            let mut client = ctx.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(db_error)?;
            upsert_evaluation(&tx, &id, &run).await?;
            for (alias, evaluation, version, metric, value) in &figures {
                tx.execute(
                    "INSERT INTO model_performance (alias, evaluation_id, version, metric, record)
                     VALUES ($1, $2, $3, $4, $5::text::json)
                     ON CONFLICT (alias, evaluation_id, version, metric)
                     DO UPDATE SET record = excluded.record",
                    &[alias, evaluation, version, metric, value],
                )
                .await
                .map_err(db_error)?;
            }
            tx.commit().await.map_err(db_error)
        })
    }

    pub(super) fn read_performance(
        &self,
        alias: &str,
    ) -> Result<Vec<PerformanceRecord>, StoreError> {
        let alias = alias.to_string();
        self.select_records(
            "performance",
            "SELECT record::text FROM model_performance WHERE alias = $1
                     ORDER BY evaluation_id, version, metric",
            Some(alias),
        )
    }

    /// Takes or renews the lease `name` for `holder` until `ttl` from now:
    /// true when `holder` has it (it was free, expired, or already its own).
    pub(super) fn take_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        let ttl_ms = ttl.as_millis() as f64;
        self.call(move |ctx| async move {
            let client = ctx.pool.get().await.map_err(pool_error)?;
            let row = client
                .query_opt(
                    "INSERT INTO leases (name, holder, expires_at)
                     VALUES ($1, $2, now() + make_interval(secs => $3::float8 / 1000.0))
                     ON CONFLICT (name) DO UPDATE
                       SET holder = excluded.holder, expires_at = excluded.expires_at
                       WHERE leases.holder = excluded.holder OR leases.expires_at < now()
                     RETURNING holder",
                    &[&name, &holder, &ttl_ms],
                )
                .await
                .map_err(db_error)?;
            Ok(row.is_some())
        })
    }

    pub(super) fn give_up_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.call(move |ctx| async move {
            let client = ctx.pool.get().await.map_err(pool_error)?;
            client
                .execute(
                    "DELETE FROM leases WHERE name = $1 AND holder = $2",
                    &[&name, &holder],
                )
                .await
                .map_err(db_error)?;
            Ok(())
        })
    }
}

async fn upsert_evaluation(
    client: &impl deadpool_postgres::GenericClient,
    id: &str,
    value: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO evaluations (id, record) VALUES ($1, $2::text::json)
             ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            &[&id, &value],
        )
        .await
        .map_err(db_error)?;
    Ok(())
}

async fn upsert_webhook(
    client: &impl deadpool_postgres::GenericClient,
    webhook: &QueuedWebhook,
) -> Result<(), StoreError> {
    let attempts = i32::try_from(webhook.attempts).unwrap_or(i32::MAX);
    let next_attempt_ms = i64::try_from(webhook.next_attempt_ms).unwrap_or(i64::MAX);
    client
        .execute(
            "INSERT INTO alert_webhooks (alert_id, attempts, next_attempt_ms) VALUES ($1, $2, $3)
             ON CONFLICT (alert_id) DO UPDATE
               SET attempts = excluded.attempts, next_attempt_ms = excluded.next_attempt_ms",
            &[&webhook.alert_id, &attempts, &next_attempt_ms],
        )
        .await
        .map_err(db_error)?;
    Ok(())
}
