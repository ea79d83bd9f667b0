//! The model registry's trees: one record per alias, its history keyed
//! `alias␟history_id` (so one alias's history is one prefix range, in
//! order), alerts by id, and the alerts' queued webhook deliveries.

use super::{SledStore, decode, encode, io};
use crate::store::{AlertRecord, ModelAliasRecord, ModelHistoryRecord, QueuedWebhook, StoreError};
use sled::Transactional;

const SEP: u8 = 0x1f;

fn history_key(alias: &str, id: &str) -> Vec<u8> {
    [alias.as_bytes(), &[SEP], id.as_bytes()].concat()
}

impl SledStore {
    pub(super) fn all_model_aliases(&self) -> Result<Vec<ModelAliasRecord>, StoreError> {
        self.model_aliases
            .iter()
            .values()
            .map(|v| decode("model alias", &v.map_err(io)?))
            .collect()
    }

    pub(super) fn write_model_alias(
        &self,
        record: &ModelAliasRecord,
        history: &ModelHistoryRecord,
    ) -> Result<(), StoreError> {
        let value = encode(record)?;
        let entry = encode(history)?;
        let key = history_key(&history.alias, &history.id);
        (&self.model_aliases, &self.model_history)
            .transaction(|(aliases, log)| {
                aliases.insert(record.alias.as_bytes(), value.as_slice())?;
                log.insert(key.as_slice(), entry.as_slice())?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StoreError::Io(format!("model registry transaction failed: {e:?}")))?;
        self.db.flush().map(drop).map_err(io)
    }

    /// Newest first, after `cursor` (a history id) when given.
    pub(super) fn alias_history(
        &self,
        alias: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ModelHistoryRecord>, StoreError> {
        let lower = history_key(alias, "");
        let upper = match cursor {
            Some(c) => history_key(alias, c),
            None => [alias.as_bytes(), &[SEP + 1]].concat(),
        };
        self.model_history
            .range(lower..upper)
            .rev()
            .take(limit)
            .map(|kv| decode("model history", &kv.map_err(io)?.1))
            .collect()
    }

    /// The alert, with its webhook delivery queued when one is given, in
    /// one transaction.
    pub(super) fn write_alert(
        &self,
        alert: &AlertRecord,
        webhook: Option<&QueuedWebhook>,
    ) -> Result<(), StoreError> {
        let value = encode(alert)?;
        let queued = webhook.map(encode).transpose()?;
        (&self.alerts, &self.webhooks)
            .transaction(|(alerts, webhooks)| {
                alerts.insert(alert.id.as_bytes(), value.as_slice())?;
                if let Some(queued) = &queued {
                    webhooks.insert(alert.id.as_bytes(), queued.as_slice())?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StoreError::Io(format!("alert transaction failed: {e:?}")))?;
        self.db.flush().map(drop).map_err(io)
    }

    /// Oldest alert first: ids are ULIDs.
    pub(super) fn list_webhooks(&self, limit: usize) -> Result<Vec<QueuedWebhook>, StoreError> {
        self.webhooks
            .iter()
            .values()
            .take(limit)
            .map(|v| decode("queued webhook", &v.map_err(io)?))
            .collect()
    }

    pub(super) fn write_webhook(&self, webhook: &QueuedWebhook) -> Result<(), StoreError> {
        self.webhooks
            .insert(webhook.alert_id.as_bytes(), encode(webhook)?)
            .map_err(io)?;
        self.db.flush().map(drop).map_err(io)
    }

    pub(super) fn remove_webhook(&self, alert_id: &str) -> Result<(), StoreError> {
        self.webhooks.remove(alert_id.as_bytes()).map_err(io)?;
        self.db.flush().map(drop).map_err(io)
    }

    pub(super) fn read_alert(&self, id: &str) -> Result<Option<AlertRecord>, StoreError> {
        self.alerts
            .get(id.as_bytes())
            .map_err(io)?
            .map(|v| decode("alert", &v))
            .transpose()
    }

    /// Newest first, after `cursor` (an alert id), keeping those `keep` accepts.
    pub(super) fn list_alerts(
        &self,
        cursor: Option<&str>,
        limit: usize,
        keep: &dyn Fn(&AlertRecord) -> bool,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        let range = match cursor {
            Some(c) => self.alerts.range(..c.as_bytes().to_vec()),
            None => self.alerts.range::<Vec<u8>, _>(..),
        };
        let mut out = Vec::new();
        for kv in range.rev() {
            let alert: AlertRecord = decode("alert", &kv.map_err(io)?.1)?;
            if keep(&alert) {
                out.push(alert);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}
