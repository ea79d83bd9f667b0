//! Background services under leases on a real PostgreSQL database: two
//! replicas (two stores on one database, each with its own holder id)
//! run the same service through the one runner; its steps never overlap,
//! and when the holder stops, the other takes the work over once the
//! lease expired — as does an alert's webhook delivery left queued by a
//! replica that died.

use crate::evaluation_fixtures::{an_alert, webhook_receiver};
use crate::helpers::eventually;
use crate::helpers::postgres::fresh_schema;
use flywheel::config::EvaluationConfig;
use flywheel::evaluation::AlertHook;
use flywheel::service::{Lease, Next, Service, periodic};
use flywheel::store::SharedStore;
use reqwest::StatusCode;
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
        ca_file: None,
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
    let (db, _cluster) = fresh_schema("l").await;
    let url = db.url;
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

/// A replica's alert hook and its delivery service, running under the
/// replica's lease.
fn webhook_replica(
    store: &SharedStore,
    holder: &str,
    url: &str,
) -> (AlertHook, tokio::task::JoinHandle<()>) {
    let config = EvaluationConfig {
        webhook_url: Some(url.to_string()),
        webhook_attempts: 1000,
        webhook_backoff_ms: 100,
        ..EvaluationConfig::default()
    };
    let hook = AlertHook::new(&config).unwrap();
    let lease = Lease::new(store.clone(), holder, TTL);
    let delivery = hook.delivery().unwrap();
    let task = tokio::spawn(delivery.run(store.clone(), Some(lease), CancellationToken::new()));
    (hook, task)
}

#[tokio::test]
async fn an_alert_a_dead_replica_could_not_deliver_is_delivered_by_the_survivor() {
    let (db, _cluster) = fresh_schema("w").await;
    let url = db.url;
    let (a_store, b_store) = (open(&url), open(&url));
    // Replica A reaches no webhook (nothing listens there); B does.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (a_hook, a) = webhook_replica(&a_store, "replica-a", &format!("http://{dead}/hook"));
    let alert = an_alert(
        &flywheel::ids::new_id("alert"),
        &flywheel::ids::now_rfc3339(),
    );
    a_hook.raise(&*a_store, &alert).unwrap();
    // A attempted it, so A holds the lease, before B starts.
    eventually(
        "A's first refused attempt",
        Duration::from_secs(30),
        || async {
            a_store
                .queued_webhooks(10)
                .unwrap()
                .first()
                .filter(|q| q.attempts >= 1)
                .cloned()
        },
    )
    .await;
    let (hook, receiver) = webhook_receiver(StatusCode::OK).await;
    let (_b_hook, b) = webhook_replica(&b_store, "replica-b", &format!("http://{hook}/hook"));
    // A dies without releasing its lease; B takes the delivery over once
    // the lease expired.
    a.abort();
    assert!(a.await.unwrap_err().is_cancelled());
    eventually(
        "the alert delivered by B and off the queue",
        Duration::from_secs(30),
        || async {
            let delivered = !receiver.bodies.lock().unwrap().is_empty();
            let queued = b_store.queued_webhooks(10).unwrap();
            (delivered && queued.is_empty()).then_some(())
        },
    )
    .await;
    let bodies = receiver.bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 1, "{bodies:#?}");
    assert_eq!(bodies[0]["alert_id"], alert.id.as_str());
    b.abort();
}
