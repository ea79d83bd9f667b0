//! Writing records as another store holds them (`flywheel migrate-store`):
//! each conversation with its turns, shadow answers and feedback in one
//! transaction, kept where it is (its listing position included); a record
//! already there is left as it is, so a second run adds only what is new.
//! The lookup entries beside them (continuation and idempotency keys) are
//! copied the same way, and read back for [`crate::store::Store::for_each_lookup`].

use super::conversations::upsert_conversations;
use super::{PgStore, db_error, pool_error, to_json};
use crate::store::{
    ConversationRecord, ConversationTallies, FeedbackRecord, InferenceRecord, Lookup, StoreError,
    TallyKey, VersionTally,
};

/// Lookup entries read or written per statement.
const LOOKUP_PAGE: i64 = 1_000;

/// What one import call counts in the database afterwards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub conversations: i64,
    pub inferences: i64,
    pub feedback: i64,
}

impl PgStore {
    /// Stores a conversation with its turns (and their shadows' answers)
    /// and feedback unless it is there already.
    pub fn import_conversation(
        &self,
        conversation: &ConversationRecord,
        inferences: &[InferenceRecord],
        feedback: &[FeedbackRecord],
    ) -> Result<(), StoreError> {
        let conversation = conversation.clone();
        let inferences: Vec<(InferenceRecord, String)> = inferences
            .iter()
            .map(|r| {
                // The embedded store's way of keeping a one-turn
                // conversation in its turn; here it has a row of its own.
                let mut r = r.clone();
                r.opens = None;
                let json = to_json(&r)?;
                Ok((r, json))
            })
            .collect::<Result<_, StoreError>>()?;
        let feedback: Vec<(FeedbackRecord, String)> = feedback
            .iter()
            .map(|f| Ok((f.clone(), to_json(f)?)))
            .collect::<Result<_, StoreError>>()?;
        self.call(move |ctx| async move {
            let mut client = ctx.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(db_error)?;
            let there = tx
                .query_opt(
                    "SELECT 1 FROM conversations WHERE id = $1",
                    &[&conversation.id],
                )
                .await
                .map_err(db_error)?;
            if there.is_none() {
                upsert_conversations(&tx, &[&conversation]).await?;
            }
            for (r, json) in &inferences {
                let turn = r.turn.map(|t| t as i32);
                tx.execute(
                    "INSERT INTO inferences (id, conversation_id, turn, completion_id, alias, version,
                       provider_model, status, http_status, latency_ms, key_id, end_user, shadow_of,
                       sticky, created_at, record)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                       $16::text::json)
                     ON CONFLICT (id) DO NOTHING",
                    &[
                        &r.id,
                        &r.conversation_id,
                        &turn,
                        &r.completion_id,
                        &r.alias,
                        &r.version,
                        &r.provider_model,
                        &r.status,
                        &i32::from(r.http_status),
                        &r.latency_ms,
                        &r.key_id,
                        &r.user,
                        &r.shadow_of,
                        &r.sticky,
                        &r.created_at,
                        json,
                    ],
                )
                .await
                .map_err(db_error)?;
            }
            for (f, json) in &feedback {
                let rating = f.rating.map(i16::from);
                let quality = f.quality_score.map(i16::from);
                tx.execute(
                    "INSERT INTO feedback (id, inference_id, conversation_id, author, rating,
                       thumbs, threat_type, severity, quality_score, created_at, record)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::text::json)
                     ON CONFLICT (id) DO NOTHING",
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
                        json,
                    ],
                )
                .await
                .map_err(db_error)?;
            }
            tx.commit().await.map_err(db_error)
        })
    }

    /// Replaces the dashboard and version tallies with the source's (a
    /// recount of what was imported) and moves the listing sequence past
    /// every imported position, so new conversations list first.
    pub fn import_tallies(
        &self,
        conversations: &ConversationTallies,
        versions: &[(TallyKey, VersionTally)],
    ) -> Result<(), StoreError> {
        let tallies = to_json(conversations)?;
        let versions = versions
            .iter()
            .map(|(k, t)| Ok((k.clone(), to_json(t)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.call(move |ctx| async move {
            let mut client = ctx.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(db_error)?;
            tx.execute(super::conversations::LOCK, &[])
                .await
                .map_err(db_error)?;
            tx.execute(
                "UPDATE conversation_tallies SET tallies = $1::text::json WHERE id = 1",
                &[&tallies],
            )
            .await
            .map_err(db_error)?;
            for (k, tally) in &versions {
                let arm = if k.shadow { "shadow" } else { "live" };
                tx.execute(
                    "INSERT INTO version_tallies (alias, version, arm, tally)
                     VALUES ($1, $2, $3, $4::text::json)
                     ON CONFLICT (alias, version, arm) DO UPDATE SET tally = excluded.tally",
                    &[&k.alias, &k.version, &arm, tally],
                )
                .await
                .map_err(db_error)?;
            }
            tx.execute(
                "SELECT setval('capture_batches',
                   GREATEST((SELECT max(batch) FROM conversations), 1))",
                &[],
            )
            .await
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)
        })
    }

    /// How many conversations, inferences and feedback the database holds.
    /// Stores lookup entries, newest first: a key already held (by an
    /// earlier, newer entry or an earlier run) keeps what it points at,
    /// and a continuation key whose inference is not here is left out.
    pub fn import_lookups(&self, lookups: &[Lookup]) -> Result<(), StoreError> {
        let (mut threads, mut turns, mut keys, mut feedback) = (vec![], vec![], vec![], vec![]);
        for lookup in lookups {
            match lookup {
                Lookup::Thread { key, inference_id } => {
                    threads.push(key.clone());
                    turns.push(inference_id.clone());
                }
                Lookup::Idempotency { key, feedback_id } => {
                    keys.push(key.clone());
                    feedback.push(feedback_id.clone());
                }
            }
        }
        self.call(move |ctx| async move {
            let client = ctx.pool.get().await.map_err(pool_error)?;
            // DISTINCT ON keeps each key's first row, the newest.
            client
                .execute(
                    "INSERT INTO thread_keys (key, inference_id)
                     SELECT DISTINCT ON (key) key, inference_id
                       FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(key, inference_id, n)
                      WHERE EXISTS (SELECT 1 FROM inferences i WHERE i.id = t.inference_id)
                      ORDER BY key, n
                     ON CONFLICT (key) DO NOTHING",
                    &[&threads, &turns],
                )
                .await
                .map_err(db_error)?;
            client
                .execute(
                    "INSERT INTO feedback_idempotency (key, feedback_id)
                     SELECT * FROM unnest($1::text[], $2::text[])
                     ON CONFLICT (key) DO NOTHING",
                    &[&keys, &feedback],
                )
                .await
                .map_err(db_error)?;
            Ok(())
        })
    }

    /// Every continuation key with its inference, then every idempotency
    /// key with its feedback, each in key order.
    pub(super) fn read_lookups(
        &self,
        visit: &mut dyn FnMut(Lookup) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let thread: fn(String, String) -> Lookup =
            |key, inference_id| Lookup::Thread { key, inference_id };
        let idempotency: fn(String, String) -> Lookup =
            |key, feedback_id| Lookup::Idempotency { key, feedback_id };
        for (table, target, lookup) in [
            ("thread_keys", "inference_id", thread),
            ("feedback_idempotency", "feedback_id", idempotency),
        ] {
            let mut after = String::new();
            loop {
                let sql = format!(
                    "SELECT key, {target} FROM {table} WHERE key > $1 ORDER BY key LIMIT {LOOKUP_PAGE}"
                );
                let from = after.clone();
                let rows: Vec<(String, String)> = self.call(move |ctx| async move {
                    let client = ctx.pool.get().await.map_err(pool_error)?;
                    let rows = client.query(&sql, &[&from]).await.map_err(db_error)?;
                    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
                })?;
                let full = rows.len() as i64 == LOOKUP_PAGE;
                for (key, id) in rows {
                    after.clone_from(&key);
                    visit(lookup(key, id))?;
                }
                if !full {
                    break;
                }
            }
        }
        Ok(())
    }

    pub fn counts(&self) -> Result<Counts, StoreError> {
        self.call(|ctx| async move {
            let client = ctx.pool.get().await.map_err(pool_error)?;
            let row = client
                .query_one(
                    "SELECT (SELECT count(*) FROM conversations), (SELECT count(*) FROM inferences),
                       (SELECT count(*) FROM feedback)",
                    &[],
                )
                .await
                .map_err(db_error)?;
            Ok(Counts {
                conversations: row.get(0),
                inferences: row.get(1),
                feedback: row.get(2),
            })
        })
    }
}
