//! The schema, created and upgraded by embedded, versioned migrations
//! (`migrations/V<n>__<name>.sql`, run by refinery and recorded in the
//! table `schema_migrations`). Every replica runs them at start-up; an
//! advisory lock makes the others wait while one applies them, so a
//! rolling upgrade migrates once.

use super::{Endpoint, PgOptions, db_error};
use crate::store::StoreError;

mod embedded {
    refinery::embed_migrations!("src/store/postgres/migrations");
}

/// The table refinery records applied migrations in.
const HISTORY_TABLE: &str = "schema_migrations";

/// Connects to `endpoint` on the current runtime and applies every
/// migration not applied yet.
pub(super) async fn run(endpoint: Endpoint) -> Result<(), StoreError> {
    let (mut client, connection) = endpoint.connect().await.map_err(db_error)?;
    let driver = tokio::spawn(connection);
    let result = async {
        client
            .execute(
                "SELECT pg_advisory_lock(hashtext(current_schema() || ':migrate'))",
                &[],
            )
            .await
            .map_err(db_error)?;
        let applied = embedded::migrations::runner()
            .set_migration_table_name(HISTORY_TABLE)
            .run_async(&mut client)
            .await
            .map_err(|e| StoreError::Io(format!("migration failed: {e}")));
        // The lock also goes with the connection.
        let _ = client
            .execute(
                "SELECT pg_advisory_unlock(hashtext(current_schema() || ':migrate'))",
                &[],
            )
            .await;
        let report = applied?;
        for m in report.applied_migrations() {
            tracing::info!(version = m.version(), name = %m.name(), "applied a database migration");
        }
        Ok(())
    }
    .await;
    drop(client);
    driver.abort();
    result
}

/// `flywheel migrate`: applies the migrations and returns what the
/// database said, for the command's output.
pub fn migrate(options: &PgOptions) -> Result<String, StoreError> {
    let endpoint = Endpoint::of(options)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Io(format!("cannot start the database runtime: {e}")))?;
    let where_to = endpoint.describe();
    runtime
        .block_on(async {
            tokio::time::timeout(options.statement_timeout * 4, run(endpoint.clone()))
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(
                        "the database did not answer in time".into(),
                    ))
                })
        })
        .map_err(|e| endpoint.refused("migrate", e))?;
    Ok(format!("the database at {where_to} is up to date"))
}
