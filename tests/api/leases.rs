//! Background services under leases on a real PostgreSQL database: two
//! replicas (two stores on one database, each with its own holder id)
//! run the same service through the one runner; its steps never overlap,
//! and when the holder stops, the other takes the work over once the
//! lease expired.

use crate::helpers::eventually;
use crate::helpers::postgres::{Cluster, database_in, database_url};
use flywheel::service::{Lease, Next, Service, periodic};
use flywheel::store::SharedStore;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const TTL: Duration = Duration::from_secs(3);

fn open(url: &str) -> SharedStore {
    let options = flywheel::store::postgres::PgOptions {
        url: url.to_string(),
        pool_size: 2,
        statement_timeout: Duration::from_secs(5),
    };
    Arc::new(flywheel::store::PgStore::open(&options).unwrap())
}

/// One replica's run of the service: its steps counted; a step lasts
/// longer than the lease, so only renewal keeps it the holder's.
fn replica(
    store: SharedStore,
    holder: &str,
    busy: Arc<AtomicBool>,
    overlaps: Arc<AtomicUsize>,
    steps: Arc<AtomicUsize>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let lease = Lease::new(store, holder, TTL);
    let service = Service::every("lease-test", Duration::from_millis(200)).leased(Some(lease));
    let task = tokio::spawn(periodic(service, stop.clone(), move || {
        let (busy, overlaps, steps) = (busy.clone(), overlaps.clone(), steps.clone());
        async move {
            if busy.swap(true, Ordering::SeqCst) {
                overlaps.fetch_add(1, Ordering::SeqCst);
            }
            tokio::time::sleep(TTL + Duration::from_secs(1)).await;
            busy.store(false, Ordering::SeqCst);
            steps.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(Next::Wait)
        }
    }));
    (stop, task)
}

#[tokio::test]
async fn a_leased_service_runs_on_one_replica_and_moves_when_it_stops() {
    let (base, _cluster) = match database_url() {
        Some(url) => (url, None),
        None => {
            let cluster = Cluster::start();
            (cluster.url(), Some(cluster))
        }
    };
    let schema = format!("l_{}", ulid::Ulid::new().to_string().to_lowercase());
    let url = database_in(&base, &schema).await.url;
    let busy = Arc::new(AtomicBool::new(false));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let (a_steps, b_steps) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (stop_a, a) = replica(
        open(&url),
        "replica-a",
        busy.clone(),
        overlaps.clone(),
        a_steps.clone(),
    );
    let (stop_b, b) = replica(
        open(&url),
        "replica-b",
        busy.clone(),
        overlaps.clone(),
        b_steps.clone(),
    );

    eventually(
        "two steps done by one replica",
        Duration::from_secs(30),
        || async {
            let (a, b) = (
                a_steps.load(Ordering::SeqCst),
                b_steps.load(Ordering::SeqCst),
            );
            (a + b >= 2).then_some(()).ok_or(format!("a {a}, b {b}"))
        },
    )
    .await;
    let (a_before, b_before) = (
        a_steps.load(Ordering::SeqCst),
        b_steps.load(Ordering::SeqCst),
    );
    assert!(
        a_before == 0 || b_before == 0,
        "both replicas stepped: a {a_before}, b {b_before}"
    );
    // The holder dies: no more renewals and no release, so the lease
    // moves only once it expired.
    let (holder, survivor_steps, survivor) = if a_before > 0 {
        (a, b_steps.clone(), "b")
    } else {
        (b, a_steps.clone(), "a")
    };
    holder.abort();
    assert!(holder.await.unwrap_err().is_cancelled());
    busy.store(false, Ordering::SeqCst);
    eventually(
        &format!("replica {survivor} to take the service over"),
        Duration::from_secs(30),
        || async {
            let n = survivor_steps.load(Ordering::SeqCst);
            (n >= 1).then_some(()).ok_or(format!("{n} steps"))
        },
    )
    .await;
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "two replicas stepped at once"
    );
    stop_a.cancel();
    stop_b.cancel();
}
