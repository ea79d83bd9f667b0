//! Inferences, conversations, feedback and the tallies that follow them.
//! Every change to a conversation takes the schema's conversation lock
//! (a transaction-scoped advisory lock) and writes the conversation, what
//! changed with it and the tallies' delta in one transaction.

use super::{Ctx, PgStore, db_error, encoding_error, from_json, pool_error, records, to_json};
use crate::store::{
    CapturedTurn, ConversationPage, ConversationRecord, ConversationScan, ConversationSignals,
    ConversationTallies, FeedbackRecord, IndexField, InferenceRecord, Position, StoreError,
    TallyKey, ThreadPoint, VersionTally,
};
use deadpool_postgres::Transaction;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Takes the conversation lock of this schema for the transaction.
pub(super) const LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':conversations'))";

/// How often an edit is tried again when the conversation moved under it.
const EDIT_TRIES: usize = 20;

/// Rows read per round trip by listings that filter in the caller.
const CHUNK: usize = 200;

/// A conversation as read for an edit: its revision and record.
type Revised = (i64, ConversationRecord);

/// A conversation's state before and after a change (`None`: absent).
struct Change {
    before: Option<ConversationRecord>,
    after: Option<ConversationRecord>,
}

fn created_ms(created_at: &str) -> i64 {
    humantime::parse_rfc3339(created_at)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

fn millis(rfc3339: &str) -> Result<i64, StoreError> {
    humantime::parse_rfc3339(rfc3339)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .ok_or(StoreError::NotFound)
}

/// A listing cursor: the last position looked at, as hex of its batch
/// and index (the form the API checks, as the sled store's).
fn cursor(p: Position) -> String {
    let mut bytes = p.0.to_be_bytes().to_vec();
    bytes.extend_from_slice(&p.1.to_be_bytes());
    hex::encode(bytes)
}

fn parse_cursor(c: &str) -> Option<(i64, i32)> {
    let bytes = hex::decode(c).ok()?;
    let batch = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let index = u32::from_be_bytes(bytes.get(8..12)?.try_into().ok()?);
    Some((i64::try_from(batch).ok()?, i32::try_from(index).ok()?))
}

/// Writes the conversations' new states and the tallies' delta; the
/// caller's transaction holds the conversation lock.
async fn commit_changes(tx: &Transaction<'_>, changes: &[Change]) -> Result<(), StoreError> {
    let mut delta = ConversationTallies::default();
    let mut touched = false;
    let mut upserts = Vec::with_capacity(changes.len());
    for change in changes {
        if let Some(c) = &change.before {
            delta.count(c, -1);
            touched = true;
        }
        match &change.after {
            Some(c) => {
                delta.count(c, 1);
                touched = true;
                upserts.push(c);
            }
            None => {
                if let Some(c) = &change.before {
                    tx.execute("DELETE FROM conversations WHERE id = $1", &[&c.id])
                        .await
                        .map_err(db_error)?;
                }
            }
        }
    }
    upsert_conversations(tx, &upserts).await?;
    if !touched {
        return Ok(());
    }
    let row = tx
        .query_one(
            "SELECT tallies::text FROM conversation_tallies WHERE id = 1",
            &[],
        )
        .await
        .map_err(db_error)?;
    let mut tallies: ConversationTallies = from_json("tallies", row.get(0))?;
    tallies.add(&delta);
    tx.execute(
        "UPDATE conversation_tallies SET tallies = $1::text::json WHERE id = 1",
        &[&to_json(&tallies)?],
    )
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Inserts or updates conversations in one statement, whatever their
/// number: a capture batch touches hundreds, and a round trip each would
/// be most of its time.
pub(super) async fn upsert_conversations(
    tx: &Transaction<'_>,
    conversations: &[&ConversationRecord],
) -> Result<(), StoreError> {
    if conversations.is_empty() {
        return Ok(());
    }
    let column = |f: &dyn Fn(&ConversationRecord) -> Option<String>| -> Vec<Option<String>> {
        conversations.iter().map(|c| f(c)).collect()
    };
    let ids = column(&|c| Some(c.id.clone()));
    let positions: Vec<Position> = conversations
        .iter()
        .map(|c| c.position.unwrap_or_default())
        .collect();
    let batches: Vec<i64> = positions.iter().map(|p| p.0 as i64).collect();
    let indexes: Vec<i32> = positions.iter().map(|p| p.1 as i32).collect();
    let created: Vec<i64> = conversations
        .iter()
        .map(|c| created_ms(&c.created_at))
        .collect();
    let updated = column(&|c| Some(c.updated_at.clone()));
    let parents = column(&|c| c.parent_id.clone());
    let statuses = column(&|c| Some(c.review.status.as_str().to_string()));
    let threats = column(&|c| c.review.threat_type.clone());
    let severities = column(&|c| c.review.severity.clone());
    let aliases = column(&|c| c.alias.clone());
    // One text[] per row does not survive UNNEST (it flattens), so each
    // row's versions travel as a JSON array.
    let versions = conversations
        .iter()
        .map(|c| to_json(&c.versions))
        .collect::<Result<Vec<String>, StoreError>>()?;
    let users = column(&|c| c.user.clone());
    let turns: Vec<i32> = conversations
        .iter()
        .map(|c| c.inference_ids.len() as i32)
        .collect();
    let texts = column(&|c| c.signals.text_hash.clone());
    let duplicates = column(&|c| c.signals.duplicate_of.clone());
    let records = conversations
        .iter()
        .map(|c| to_json(*c))
        .collect::<Result<Vec<String>, StoreError>>()?;
    tx.execute(
        "INSERT INTO conversations (id, batch, batch_index, created_ms, created_at, updated_at,
           parent_id, status, threat_type, severity, alias, versions, end_user, turns, text_hash,
           duplicate_of, record)
         SELECT id, batch, batch_index, created_ms, to_timestamp(created_ms / 1000.0), updated_at,
           parent_id, status, threat_type, severity, alias,
           ARRAY(SELECT json_array_elements_text(versions::json)), end_user, turns, text_hash,
           duplicate_of, record::json
         FROM UNNEST($1::text[], $2::int8[], $3::int4[], $4::int8[], $5::text[], $6::text[],
           $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::int4[],
           $14::text[], $15::text[], $16::text[])
           AS u(id, batch, batch_index, created_ms, updated_at, parent_id, status, threat_type,
             severity, alias, versions, end_user, turns, text_hash, duplicate_of, record)
         ON CONFLICT (id) DO UPDATE SET updated_at = excluded.updated_at,
           status = excluded.status, threat_type = excluded.threat_type,
           severity = excluded.severity, alias = excluded.alias, versions = excluded.versions,
           end_user = excluded.end_user, turns = excluded.turns, text_hash = excluded.text_hash,
           duplicate_of = excluded.duplicate_of, record = excluded.record,
           revision = conversations.revision + 1",
        &[
            &ids,
            &batches,
            &indexes,
            &created,
            &updated,
            &parents,
            &statuses,
            &threats,
            &severities,
            &aliases,
            &versions,
            &users,
            &turns,
            &texts,
            &duplicates,
            &records,
        ],
    )
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Adds each delta to its version's stored tally.
async fn merge_version_tallies(
    tx: &Transaction<'_>,
    deltas: &[(TallyKey, VersionTally)],
) -> Result<(), StoreError> {
    let mut merged: BTreeMap<(String, String, &'static str), VersionTally> = BTreeMap::new();
    for (key, delta) in deltas {
        let arm = if key.shadow { "shadow" } else { "live" };
        let k = (key.alias.clone(), key.version.clone(), arm);
        if !merged.contains_key(&k) {
            let stored = tx
                .query_opt(
                    "SELECT tally::text FROM version_tallies
                     WHERE alias = $1 AND version = $2 AND arm = $3",
                    &[&k.0, &k.1, &k.2],
                )
                .await
                .map_err(db_error)?
                .map(|row| from_json("version tally", row.get::<_, &str>(0)))
                .transpose()?
                .unwrap_or_default();
            merged.insert(k.clone(), stored);
        }
        if let Some(t) = merged.get_mut(&k) {
            t.merge(delta);
        }
    }
    for ((alias, version, arm), tally) in merged {
        tx.execute(
            "INSERT INTO version_tallies (alias, version, arm, tally) VALUES ($1, $2, $3, $4::text::json)
             ON CONFLICT (alias, version, arm) DO UPDATE SET tally = excluded.tally",
            &[&alias, &version, &arm, &to_json(&tally)?],
        )
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

/// Reads a conversation with its revision.
async fn load(ctx: &Ctx, id: &str) -> Result<Option<Revised>, StoreError> {
    let client = ctx.pool.get().await.map_err(pool_error)?;
    let row = client
        .query_opt(
            "SELECT revision, record::text FROM conversations WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(db_error)?;
    row.map(|r| Ok((r.get(0), from_json("conversation", r.get::<_, &str>(1))?)))
        .transpose()
}

/// True when the conversation is still at `revision` (absent when `None`).
async fn unchanged(
    tx: &Transaction<'_>,
    id: &str,
    revision: Option<i64>,
) -> Result<bool, StoreError> {
    let row = tx
        .query_opt("SELECT revision FROM conversations WHERE id = $1", &[&id])
        .await
        .map_err(db_error)?;
    Ok(row.map(|r| r.get::<_, i64>(0)) == revision)
}

fn conflict() -> StoreError {
    StoreError::Unavailable(format!(
        "the conversation kept changing over {EDIT_TRIES} tries; retry shortly"
    ))
}

impl PgStore {
    pub(super) fn read_conversation(&self, id: &str) -> Result<Option<Revised>, StoreError> {
        let id = id.to_string();
        self.call(move |ctx| async move { load(&ctx, &id).await })
    }

    pub(super) fn read_inference(&self, id: &str) -> Result<Option<InferenceRecord>, StoreError> {
        let id = id.to_string();
        self.one_inference("SELECT record::text FROM inferences WHERE id = $1", id)
    }

    pub(super) fn read_inference_by_completion(
        &self,
        completion_id: &str,
    ) -> Result<Option<InferenceRecord>, StoreError> {
        self.one_inference(
            "SELECT record::text FROM inferences WHERE completion_id = $1 ORDER BY id DESC LIMIT 1",
            completion_id.to_string(),
        )
    }

    fn one_inference(
        &self,
        sql: &'static str,
        arg: String,
    ) -> Result<Option<InferenceRecord>, StoreError> {
        self.call(move |ctx| async move {
            let client = ctx.pool.get().await.map_err(pool_error)?;
            let row = client.query_opt(sql, &[&arg]).await.map_err(db_error)?;
            row.map(|r| from_json("inference", r.get::<_, &str>(0)))
                .transpose()
        })
    }

    pub(super) fn read_inferences_between(
        &self,
        after: Option<&str>,
        before: &str,
        limit: usize,
    ) -> Result<Vec<InferenceRecord>, StoreError> {
        let (after, before, limit) = (after.map(str::to_string), before.to_string(), limit as i64);
        self.call(move |ctx| async move {
            let client = ctx.pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    "SELECT record::text FROM inferences
                     WHERE ($1::text IS NULL OR id > $1) AND id < $2 ORDER BY id LIMIT $3",
                    &[&after, &before, &limit],
                )
                .await
                .map_err(db_error)?;
            records("inference", &rows)
        })
    }

    pub(super) fn read_shadows(
        &self,
        inference_id: &str,
    ) -> Result<Vec<InferenceRecord>, StoreError> {
        let id = inference_id.to_string();
        self.select_records(
            "inference",
            "SELECT record::text FROM inferences WHERE shadow_of = $1 ORDER BY id",
            Some(id),
        )
    }

    pub(super) fn read_thread(&self, key: &str) -> Result<Option<ThreadPoint>, StoreError> {
        let key = key.to_ascii_lowercase();
        self.call(move |ctx| async move {
            let client = ctx.pool.get().await.map_err(pool_error)?;
            let row = client
                .query_opt(
                    "SELECT i.conversation_id, i.turn, i.sticky
                     FROM thread_keys t JOIN inferences i ON i.id = t.inference_id
                     WHERE t.key = $1",
                    &[&key],
                )
                .await
                .map_err(db_error)?;
            Ok(row.and_then(|r| {
                Some(ThreadPoint {
                    conversation_id: r.get(0),
                    turn: usize::try_from(r.get::<_, Option<i32>>(1)?).ok()?,
                    sticky: r.get(2),
                })
            }))
        })
    }

    pub(super) fn read_tallies(&self) -> Result<ConversationTallies, StoreError> {
        self.call(|ctx| async move {
            let client = ctx.pool.get().await.map_err(pool_error)?;
            let row = client
                .query_one(
                    "SELECT tallies::text FROM conversation_tallies WHERE id = 1",
                    &[],
                )
                .await
                .map_err(db_error)?;
            from_json("tallies", row.get(0))
        })
    }

    pub(super) fn read_feedback_for(
        &self,
        inference_id: &str,
    ) -> Result<Vec<FeedbackRecord>, StoreError> {
        let id = inference_id.to_string();
        self.select_records(
            "feedback",
            "SELECT record::text FROM feedback WHERE inference_id = $1 ORDER BY id",
            Some(id),
        )
    }

    pub(super) fn read_feedback_by_idempotency(
        &self,
        key: &str,
    ) -> Result<Option<FeedbackRecord>, StoreError> {
        let key = key.to_string();
        self.call(move |ctx| async move {
            let client = ctx.pool.get().await.map_err(pool_error)?;
            let row = client
                .query_opt(
                    "SELECT f.record::text FROM feedback_idempotency i
                     JOIN feedback f ON f.id = i.feedback_id WHERE i.key = $1",
                    &[&key],
                )
                .await
                .map_err(db_error)?;
            row.map(|r| from_json("feedback", r.get::<_, &str>(0)))
                .transpose()
        })
    }

    /// Reads a conversation, lets `edit` change it on this thread, and
    /// writes it back (with `write`'s other changes) if nobody changed it
    /// meanwhile; otherwise starts again.
    fn edit_with<R: Send + 'static>(
        &self,
        id: &str,
        edit: &mut dyn FnMut(Option<&ConversationRecord>) -> Option<ConversationRecord>,
        write: impl Fn(Arc<Ctx>, Option<i64>, Change) -> WriteFuture<R>,
    ) -> Result<R, StoreError> {
        for _ in 0..EDIT_TRIES {
            let read = self.read_conversation(id)?;
            let (revision, before) = match read {
                Some((r, c)) => (Some(r), Some(c)),
                None => (None, None),
            };
            let after = edit(before.as_ref());
            let change = Change { before, after };
            let future = write(self.ctx.clone(), revision, change);
            if let Some(done) = self.call(move |_| future)? {
                return Ok(done);
            }
        }
        Err(conflict())
    }

    pub(super) fn edit_conversation(
        &self,
        id: &str,
        edit: &mut dyn FnMut(&mut ConversationRecord),
    ) -> Result<Option<ConversationRecord>, StoreError> {
        let owned = id.to_string();
        self.edit_with(
            id,
            &mut |before| {
                before.cloned().map(|mut c| {
                    edit(&mut c);
                    c
                })
            },
            move |ctx, revision, change| {
                let id = owned.clone();
                Box::pin(async move {
                    let mut client = ctx.pool.get().await.map_err(pool_error)?;
                    let tx = client.transaction().await.map_err(db_error)?;
                    tx.execute(LOCK, &[]).await.map_err(db_error)?;
                    if !unchanged(&tx, &id, revision).await? {
                        return Ok(None);
                    }
                    commit_changes(&tx, std::slice::from_ref(&change)).await?;
                    tx.commit().await.map_err(db_error)?;
                    Ok(Some(change.after))
                })
            },
        )
    }

    pub(super) fn write_feedback(
        &self,
        feedback: &FeedbackRecord,
        idempotency: Option<&str>,
        review: &mut dyn FnMut(&mut ConversationRecord),
        tally: Option<&(TallyKey, VersionTally)>,
    ) -> Result<(), StoreError> {
        let record = feedback.clone();
        let json = to_json(feedback)?;
        let idempotency = idempotency.map(str::to_string);
        let tally = tally.cloned();
        let conversation = feedback.conversation_id.clone();
        self.edit_with(
            &feedback.conversation_id,
            &mut |before| {
                before.cloned().map(|mut c| {
                    review(&mut c);
                    c
                })
            },
            move |ctx, revision, change| {
                let (f, json, idempotency, tally, id) = (
                    record.clone(),
                    json.clone(),
                    idempotency.clone(),
                    tally.clone(),
                    conversation.clone(),
                );
                Box::pin(async move {
                    let mut client = ctx.pool.get().await.map_err(pool_error)?;
                    let tx = client.transaction().await.map_err(db_error)?;
                    tx.execute(LOCK, &[]).await.map_err(db_error)?;
                    if !unchanged(&tx, &id, revision).await? {
                        return Ok(None);
                    }
                    let rating = f.rating.map(i16::from);
                    let quality = f.quality_score.map(i16::from);
                    tx.execute(
                        "INSERT INTO feedback (id, inference_id, conversation_id, author, rating,
                           thumbs, threat_type, severity, quality_score, created_at, record)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::text::json)",
                        &[
                            &f.id,
                            &f.inference_id,
                            &f.conversation_id,
                            &f.author,
                            &rating,
                            &f.thumbs,
                            &f.threat_type,
                            &f.severity,
                            &quality,
                            &f.created_at,
                            &json,
                        ],
                    )
                    .await
                    .map_err(db_error)?;
                    if let Some(key) = &idempotency {
                        let taken = tx
                            .execute(
                                "INSERT INTO feedback_idempotency (key, feedback_id) VALUES ($1, $2)
                                 ON CONFLICT (key) DO NOTHING",
                                &[key, &f.id],
                            )
                            .await
                            .map_err(db_error)?;
                        if taken == 0 {
                            // Another replica stored feedback with this key
                            // a moment ago: nothing of this one is kept, and
                            // a retry answers with that one.
                            return Err(StoreError::Unavailable(
                                "feedback with this idempotency key was stored meanwhile; retry to get it".into(),
                            ));
                        }
                    }
                    if let Some(t) = &tally {
                        merge_version_tallies(&tx, std::slice::from_ref(t)).await?;
                    }
                    commit_changes(&tx, std::slice::from_ref(&change)).await?;
                    tx.commit().await.map_err(db_error)?;
                    Ok(Some(()))
                })
            },
        )
    }

    pub(super) fn remove_inference(
        &self,
        record: &InferenceRecord,
        forget: &mut dyn FnMut(&mut ConversationRecord, &[FeedbackRecord]),
    ) -> Result<(), StoreError> {
        let feedback = self.read_feedback_for(&record.id)?;
        let inference = record.id.clone();
        let conversation = record.conversation_id.clone();
        self.edit_with(
            &record.conversation_id,
            &mut |before| {
                before.cloned().and_then(|mut c| {
                    c.inference_ids.retain(|id| *id != inference);
                    forget(&mut c, &feedback);
                    (!c.inference_ids.is_empty()).then_some(c)
                })
            },
            {
                let inference = record.id.clone();
                move |ctx, revision, change| {
                    let (inference, id) = (inference.clone(), conversation.clone());
                    Box::pin(async move {
                        let mut client = ctx.pool.get().await.map_err(pool_error)?;
                        let tx = client.transaction().await.map_err(db_error)?;
                        tx.execute(LOCK, &[]).await.map_err(db_error)?;
                        if !unchanged(&tx, &id, revision).await? {
                            return Ok(None);
                        }
                        delete_inferences(&tx, std::slice::from_ref(&inference)).await?;
                        commit_changes(&tx, std::slice::from_ref(&change)).await?;
                        tx.commit().await.map_err(db_error)?;
                        Ok(Some(()))
                    })
                }
            },
        )
    }

    pub(super) fn remove_conversation(
        &self,
        id: &str,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        let id = id.to_string();
        self.call(move |ctx| async move {
            let mut client = ctx.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(db_error)?;
            tx.execute(LOCK, &[]).await.map_err(db_error)?;
            let Some(row) = tx
                .query_opt(
                    "SELECT record::text FROM conversations WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(db_error)?
            else {
                return Ok(None);
            };
            let before: ConversationRecord = from_json("conversation", row.get(0))?;
            delete_inferences(&tx, &before.inference_ids).await?;
            let change = Change {
                before: Some(before.clone()),
                after: None,
            };
            commit_changes(&tx, std::slice::from_ref(&change)).await?;
            tx.commit().await.map_err(db_error)?;
            Ok(Some(before))
        })
    }

    pub(super) fn walk_conversations(
        &self,
        scan: &ConversationScan,
        keep: &dyn Fn(&ConversationRecord) -> bool,
    ) -> Result<ConversationPage, StoreError> {
        let since = scan.since.as_deref().map(millis).transpose()?;
        let until = scan.until.as_deref().map(millis).transpose()?;
        let mut from = match &scan.cursor {
            Some(c) => parse_cursor(c).ok_or(StoreError::NotFound)?,
            None => (i64::MAX, i32::MAX),
        };
        let (column, value) = match &scan.index {
            None => ("", String::new()),
            Some((field, value)) => (index_condition(*field), value.clone()),
        };
        let mut page = ConversationPage::default();
        let mut looked_at = 0;
        let mut last: Option<Position> = None;
        loop {
            // One more than the page can look at, to know whether more follow.
            let want = (scan.budget.saturating_sub(looked_at) + 1).min(CHUNK) as i64;
            let value = value.clone();
            let rows: Vec<(i64, i32, ConversationRecord)> = self.call(move |ctx| async move {
                let client = ctx.pool.get().await.map_err(pool_error)?;
                let filter = if column.is_empty() {
                    "$1::text IS NOT NULL"
                } else {
                    column
                };
                let sql = format!(
                    "SELECT batch, batch_index, record::text FROM conversations
                     WHERE {filter} AND ($2::bigint IS NULL OR created_ms >= $2)
                       AND ($3::bigint IS NULL OR created_ms < $3)
                       AND (batch, batch_index) < ($4, $5)
                     ORDER BY batch DESC, batch_index DESC LIMIT $6"
                );
                let rows = client
                    .query(&sql, &[&value, &since, &until, &from.0, &from.1, &want])
                    .await
                    .map_err(db_error)?;
                rows.iter()
                    .map(|r| {
                        Ok((
                            r.get(0),
                            r.get(1),
                            from_json("conversation", r.get::<_, &str>(2))?,
                        ))
                    })
                    .collect()
            })?;
            let exhausted = (rows.len() as i64) < want;
            for (batch, index, c) in rows {
                if page.data.len() >= scan.limit || looked_at >= scan.budget {
                    page.next_cursor = last.map(cursor);
                    return Ok(page);
                }
                looked_at += 1;
                last = Some(Position(batch as u64, index as u32));
                from = (batch, index);
                if keep(&c) {
                    page.data.push(c);
                }
            }
            if exhausted {
                return Ok(page);
            }
        }
    }

    pub(super) fn visit_conversations(
        &self,
        visit: &mut dyn FnMut(ConversationRecord) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut from = (i64::MIN, i32::MIN);
        loop {
            let rows: Vec<(i64, i32, ConversationRecord)> = self.call(move |ctx| async move {
                let client = ctx.pool.get().await.map_err(pool_error)?;
                let rows = client
                    .query(
                        "SELECT batch, batch_index, record::text FROM conversations
                         WHERE (batch, batch_index) > ($1, $2)
                         ORDER BY batch, batch_index LIMIT $3",
                        &[&from.0, &from.1, &(CHUNK as i64)],
                    )
                    .await
                    .map_err(db_error)?;
                rows.iter()
                    .map(|r| {
                        Ok((
                            r.get(0),
                            r.get(1),
                            from_json("conversation", r.get::<_, &str>(2))?,
                        ))
                    })
                    .collect()
            })?;
            let exhausted = rows.len() < CHUNK;
            for (batch, index, c) in rows {
                from = (batch, index);
                visit(c)?;
            }
            if exhausted {
                return Ok(());
            }
        }
    }

    pub(super) fn write_captured(&self, batch: &mut [CapturedTurn]) -> Result<(), StoreError> {
        let turns = batch.to_vec();
        let stored = self.call(move |ctx| async move { capture(&ctx, turns).await })?;
        // The store sets each turn's index, as the records now say.
        for (turn, index) in batch.iter_mut().zip(stored) {
            if index.is_some() {
                turn.record.turn = index;
            }
        }
        Ok(())
    }
}

type WriteFuture<R> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Option<R>, StoreError>> + Send>>;

/// The condition on `$1` a listing by `field` walks.
fn index_condition(field: IndexField) -> &'static str {
    match field {
        IndexField::Status => "status = $1",
        IndexField::ThreatType => "threat_type = $1",
        IndexField::Severity => "severity = $1",
        IndexField::Alias => "alias = $1",
        IndexField::Version => "versions @> ARRAY[$1::text]",
        IndexField::User => "end_user = $1",
    }
}

/// Deletes inferences with their feedback and their shadows' answers
/// (their continuation keys go with them).
async fn delete_inferences(tx: &Transaction<'_>, ids: &[String]) -> Result<(), StoreError> {
    for sql in [
        "DELETE FROM feedback WHERE inference_id = ANY($1)",
        "DELETE FROM inferences WHERE shadow_of = ANY($1)",
        "DELETE FROM inferences WHERE id = ANY($1)",
    ] {
        tx.execute(sql, &[&ids]).await.map_err(db_error)?;
    }
    Ok(())
}

/// Stores a capture batch in one transaction (see [`crate::store::Store::store_captured`]);
/// returns each turn's index in its conversation, `None` for a turn
/// stored before or a shadow's answer.
async fn capture(
    ctx: &Ctx,
    mut batch: Vec<CapturedTurn>,
) -> Result<Vec<Option<usize>>, StoreError> {
    let mut client = ctx.pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(db_error)?;
    tx.execute(LOCK, &[]).await.map_err(db_error)?;
    let ids: Vec<&str> = batch.iter().map(|t| t.record.id.as_str()).collect();
    let stored: HashSet<String> = tx
        .query("SELECT id FROM inferences WHERE id = ANY($1)", &[&ids])
        .await
        .map_err(db_error)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // A batch retried after a failed commit: what was stored stays.
    let fresh: Vec<usize> = (0..batch.len())
        .filter(|&i| !stored.contains(&batch[i].record.id))
        .collect();
    let mut indexes = vec![None; batch.len()];
    if fresh.is_empty() {
        tx.commit().await.map_err(db_error)?;
        return Ok(indexes);
    }
    let conversation_ids: Vec<&str> = fresh
        .iter()
        .filter(|&&i| batch[i].record.shadow_of.is_none())
        .map(|&i| batch[i].record.conversation_id.as_str())
        .collect();
    let mut existing: HashMap<String, ConversationRecord> = HashMap::new();
    for row in tx
        .query(
            "SELECT id, record::text FROM conversations WHERE id = ANY($1)",
            &[&conversation_ids],
        )
        .await
        .map_err(db_error)?
    {
        existing.insert(
            row.get(0),
            from_json("conversation", row.get::<_, &str>(1))?,
        );
    }
    let texts: Vec<&str> = fresh
        .iter()
        .filter_map(|&i| batch[i].signals.text_hash.as_deref())
        .collect();
    let mut owners: HashMap<String, Option<String>> = HashMap::new();
    for row in tx
        .query(
            "SELECT DISTINCT ON (text_hash) text_hash, id FROM conversations
             WHERE text_hash = ANY($1) AND duplicate_of IS NULL
             ORDER BY text_hash, batch, batch_index",
            &[&texts],
        )
        .await
        .map_err(db_error)?
    {
        owners.insert(row.get(0), Some(row.get(1)));
    }
    let batch_id: i64 = tx
        .query_one("SELECT nextval('capture_batches')", &[])
        .await
        .map_err(db_error)?
        .get(0);

    // The conversations this batch changes, in order of first touch.
    let mut touched: Vec<Change> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut thread_keys: Vec<(String, String)> = Vec::new();
    let mut deltas: Vec<(TallyKey, VersionTally)> = Vec::new();
    let mut new_index = 0u32;
    for &i in &fresh {
        let turn = &mut batch[i];
        if turn.record.shadow_of.is_none() {
            let at = match by_id.get(&turn.record.conversation_id) {
                Some(at) => *at,
                None => {
                    let before = existing.remove(&turn.record.conversation_id);
                    let mut after = before
                        .clone()
                        .unwrap_or_else(|| ConversationRecord::opening(turn));
                    if before.is_none() {
                        after.position = Some(Position(batch_id as u64, new_index));
                        new_index += 1;
                    }
                    touched.push(Change {
                        before,
                        after: Some(after),
                    });
                    by_id.insert(turn.record.conversation_id.clone(), touched.len() - 1);
                    touched.len() - 1
                }
            };
            let Some(conversation) = touched[at].after.as_mut() else {
                continue;
            };
            let index = conversation.append(turn);
            turn.record.turn = Some(index);
            indexes[i] = Some(index);
            let duplicate = turn.signals.text_hash.as_ref().and_then(|text| {
                let owner = owners
                    .entry(text.clone())
                    .or_insert_with(|| Some(conversation.id.clone()))
                    .clone();
                owner.filter(|o| *o != conversation.id)
            });
            conversation.signals = ConversationSignals {
                upstream_error: conversation.signals.upstream_error || turn.signals.upstream_error,
                duplicate_of: duplicate,
                ..turn.signals.clone()
            };
            for key in &turn.continuations {
                thread_keys.push((key.to_ascii_lowercase(), turn.record.id.clone()));
            }
        }
        deltas.extend(turn.tally.clone());
    }
    insert_inferences(&tx, &batch, &fresh).await?;
    insert_thread_keys(&tx, thread_keys).await?;
    merge_version_tallies(&tx, &deltas).await?;
    commit_changes(&tx, &touched).await?;
    tx.commit().await.map_err(db_error)?;
    Ok(indexes)
}

/// The batch's continuation keys in one statement. A later turn leaving
/// the same key is the one a follow-up means: within the batch the last
/// wins (one statement may not change a row twice), then over what is
/// stored.
async fn insert_thread_keys(
    tx: &Transaction<'_>,
    keys: Vec<(String, String)>,
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let last: HashMap<String, String> = keys.into_iter().collect();
    let (keys, inferences): (Vec<String>, Vec<String>) = last.into_iter().unzip();
    tx.execute(
        "INSERT INTO thread_keys (key, inference_id)
         SELECT * FROM UNNEST($1::text[], $2::text[])
         ON CONFLICT (key) DO UPDATE SET inference_id = excluded.inference_id",
        &[&keys, &inferences],
    )
    .await
    .map_err(db_error)?;
    Ok(())
}

/// A captured turn's whole record as JSON text.
fn turn_json(turn: &CapturedTurn) -> Result<String, StoreError> {
    let json = turn.record_json().map_err(encoding_error)?;
    String::from_utf8(json).map_err(encoding_error)
}

/// The batch's new records in one multi-row INSERT.
async fn insert_inferences(
    tx: &Transaction<'_>,
    batch: &[CapturedTurn],
    fresh: &[usize],
) -> Result<(), StoreError> {
    let records: Vec<&InferenceRecord> = fresh.iter().map(|&i| &batch[i].record).collect();
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    let conversations: Vec<&str> = records.iter().map(|r| r.conversation_id.as_str()).collect();
    let turns: Vec<Option<i32>> = records.iter().map(|r| r.turn.map(|t| t as i32)).collect();
    let completions: Vec<Option<&str>> =
        records.iter().map(|r| r.completion_id.as_deref()).collect();
    let aliases: Vec<Option<&str>> = records.iter().map(|r| r.alias.as_deref()).collect();
    let versions: Vec<Option<&str>> = records.iter().map(|r| r.version.as_deref()).collect();
    let models: Vec<&str> = records.iter().map(|r| r.provider_model.as_str()).collect();
    let statuses: Vec<&str> = records.iter().map(|r| r.status.as_str()).collect();
    let http: Vec<i32> = records.iter().map(|r| i32::from(r.http_status)).collect();
    let latency: Vec<f64> = records.iter().map(|r| r.latency_ms).collect();
    let keys: Vec<&str> = records.iter().map(|r| r.key_id.as_str()).collect();
    let users: Vec<Option<&str>> = records.iter().map(|r| r.user.as_deref()).collect();
    let shadows: Vec<Option<&str>> = records.iter().map(|r| r.shadow_of.as_deref()).collect();
    let sticky: Vec<Option<&str>> = records.iter().map(|r| r.sticky.as_deref()).collect();
    let created: Vec<&str> = records.iter().map(|r| r.created_at.as_str()).collect();
    let json = fresh
        .iter()
        .map(|&i| turn_json(&batch[i]))
        .collect::<Result<Vec<String>, StoreError>>()?;
    tx.execute(
        "INSERT INTO inferences (id, conversation_id, turn, completion_id, alias, version,
           provider_model, status, http_status, latency_ms, key_id, end_user, shadow_of,
           sticky, created_at, record)
         SELECT id, conversation_id, turn, completion_id, alias, version, provider_model, status,
           http_status, latency_ms, key_id, end_user, shadow_of, sticky, created_at, record::json
         FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::text[],
           $7::text[], $8::text[], $9::int4[], $10::float8[], $11::text[], $12::text[],
           $13::text[], $14::text[], $15::text[], $16::text[])
           AS u(id, conversation_id, turn, completion_id, alias, version, provider_model, status,
             http_status, latency_ms, key_id, end_user, shadow_of, sticky, created_at, record)",
        &[
            &ids,
            &conversations,
            &turns,
            &completions,
            &aliases,
            &versions,
            &models,
            &statuses,
            &http,
            &latency,
            &keys,
            &users,
            &shadows,
            &sticky,
            &created,
            &json,
        ],
    )
    .await
    .map_err(db_error)?;
    Ok(())
}
