//! The change feed between replicas: a write that other replicas keep in
//! memory (the registry's routing table, the key ring) sends a
//! notification on the database's channel in its own transaction
//! (`pg_notify`, delivered at commit); every replica listens on a
//! connection of its own and reloads what changed. A notification missed
//! while the listening connection was down is healed by a reload of
//! everything after each reconnection and every [`RECONCILE_EVERY`].

use crate::store::StoreError;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::AsyncMessage;

/// How often every replica reloads everything, notified or not.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(10);
/// The wait before listening again after the connection dropped.
const RECONNECT_WAIT: Duration = Duration::from_millis(500);

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A model alias: versions, traffic, production.
    Registry,
    /// An API key was created or revoked.
    Keys,
    /// Anything may have changed (after a reconnection, or periodically).
    All,
}

impl Change {
    fn payload(self) -> &'static str {
        match self {
            Self::Registry => "registry",
            Self::Keys => "keys",
            Self::All => "all",
        }
    }

    fn parse(payload: &str) -> Self {
        match payload {
            "registry" => Self::Registry,
            "keys" => Self::Keys,
            _ => Self::All,
        }
    }
}

/// The channel of one database and schema (replicas of another schema in
/// the same database must not hear it).
pub(super) fn channel_name(database_and_schema: &str) -> String {
    let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(
        database_and_schema.as_bytes(),
    ));
    format!("flywheel_{}", hex::encode(&digest[..8]))
}

/// Announces a change; delivered when `tx` commits.
pub(super) async fn notify(
    tx: &deadpool_postgres::Transaction<'_>,
    channel: &str,
    change: Change,
) -> Result<(), StoreError> {
    tx.execute("SELECT pg_notify($1, $2)", &[&channel, &change.payload()])
        .await
        .map_err(super::db_error)?;
    Ok(())
}

/// Follows the changes other replicas announce.
pub struct ChangeFeed {
    handle: tokio::runtime::Handle,
    endpoint: super::Endpoint,
    channel: String,
}

impl ChangeFeed {
    pub(super) fn new(
        handle: tokio::runtime::Handle,
        endpoint: super::Endpoint,
        channel: String,
    ) -> Self {
        Self {
            handle,
            endpoint,
            channel,
        }
    }

    /// Calls `apply` on a blocking thread for every change announced, for
    /// [`Change::All`] after each (re)connection and every
    /// [`RECONCILE_EVERY`], until `stop` is cancelled.
    pub fn follow(
        self,
        apply: Arc<dyn Fn(Change) + Send + Sync>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let handle = self.handle.clone();
        handle.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = self.run(apply) => {}
            }
        });
    }

    async fn run(self, apply: Arc<dyn Fn(Change) + Send + Sync>) {
        let deliver = |change: Change| {
            let apply = apply.clone();
            // Reloading reads the store, whose calls block.
            tokio::task::spawn_blocking(move || apply(change))
        };
        let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
        loop {
            match self.endpoint.connect().await {
                Err(e) => tracing::debug!(error = %e, "cannot listen for changes yet"),
                Ok((client, mut connection)) => {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    let listen = format!("LISTEN \"{}\"", self.channel);
                    // The client's requests go out as the connection is polled.
                    let listening = async {
                        tokio::select! {
                            r = client.batch_execute(&listen) => r.is_ok(),
                            _ = messages.next() => false,
                        }
                    };
                    if listening.await {
                        let _ = deliver(Change::All).await;
                        loop {
                            tokio::select! {
                                message = messages.next() => match message {
                                    Some(Ok(AsyncMessage::Notification(n))) => {
                                        let _ = deliver(Change::parse(n.payload())).await;
                                    }
                                    Some(Ok(_)) => {}
                                    Some(Err(_)) | None => break,
                                },
                                _ = reconcile.tick() => {
                                    let _ = deliver(Change::All).await;
                                }
                            }
                        }
                        tracing::warn!("the change feed's connection dropped; listening again");
                    }
                }
            }
            tokio::time::sleep(RECONNECT_WAIT).await;
        }
    }
}
