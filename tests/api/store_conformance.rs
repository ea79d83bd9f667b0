//! One set of store conformance checks, run against each backend: the
//! embedded sled store and PostgreSQL (a real server: the test database
//! `FLYWHEEL_TEST_DATABASE_URL` names, else a cluster of the test's own).
//! Each check drives the `Store` trait as the application does and
//! asserts what every backend must give back.

use crate::evaluation_fixtures::an_alert;
use crate::helpers::postgres::{Cluster, fresh_schema};
use flywheel::store::{
    AlertRecord, ApiKeyRecord, AuditRecord, CapturedTurn, ConversationScan, ConversationSignals,
    ConversationTallies, FeedbackRecord, IndexField, InferenceRecord, Lookup, QueuedWebhook,
    ReviewStatus, SharedStore, StoreError,
};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A store of each kind, fresh; the cluster (if one was started) lives
/// as long as the stores.
struct Backends {
    stores: Vec<(&'static str, SharedStore)>,
    _dir: tempfile::TempDir,
    _cluster: Option<Cluster>,
}

async fn backends() -> Backends {
    let dir = tempfile::tempdir().unwrap();
    let sled = flywheel::store::open(&dir.path().join("sled")).unwrap();
    let (db, cluster) = fresh_schema("c").await;
    let options = flywheel::store::postgres::PgOptions {
        url: db.url,
        pool_size: 4,
        statement_timeout: Duration::from_secs(5),
        ca_file: None,
    };
    let pg: SharedStore = Arc::new(flywheel::store::PgStore::open(&options).unwrap());
    Backends {
        stores: vec![("sled", sled), ("postgres", pg)],
        _dir: dir,
        _cluster: cluster,
    }
}

/// An RFC 3339 time `seconds` after a minute before the first call: one
/// base for the whole test, however slowly it runs.
fn at(seconds: u64) -> String {
    static BASE: std::sync::LazyLock<SystemTime> =
        std::sync::LazyLock::new(|| SystemTime::now() - Duration::from_secs(60));
    humantime::format_rfc3339_seconds(*BASE + Duration::from_secs(seconds)).to_string()
}

fn record(id: &str, conversation: &str, created_at: &str) -> InferenceRecord {
    serde_json::from_value(serde_json::json!({
        "id": id, "completion_id": null, "alias": "triage",
        "version": if id.ends_with('0') { "base" } else { "large" },
        "provider_model": "m", "request": {"messages": [{"role": "user", "content": "alert \u{0} text"}]},
        "response": null, "streamed": false, "status": "ok", "http_status": 200,
        "latency_ms": 1.0, "first_byte_ms": null, "key_id": "k",
        "user": if conversation.ends_with('1') { "ana" } else { "bob" },
        "tags": {}, "conversation_id": conversation, "created_at": created_at,
    }))
    .unwrap()
}

fn turn(conversation: &str, inference: &str, created_at: &str) -> CapturedTurn {
    let mut turn = CapturedTurn::new(record(inference, conversation, created_at)).unwrap();
    turn.preview = "alert".into();
    turn
}

fn capture(store: &SharedStore, turns: Vec<CapturedTurn>) {
    let mut turns = turns;
    store.store_captured(&mut turns).unwrap();
}

fn all_ids(store: &SharedStore, scan: ConversationScan) -> Vec<String> {
    let mut ids = Vec::new();
    let mut scan = ConversationScan {
        limit: 3,
        budget: 7,
        ..scan
    };
    loop {
        let page = store.list_conversations(&scan, &|_| true).unwrap();
        ids.extend(page.data.into_iter().map(|c| c.id));
        match page.next_cursor {
            Some(c) => scan.cursor = Some(c),
            None => return ids,
        }
    }
}

/// Every lookup entry the store keeps, as `for_each_lookup` gives them.
fn lookups(store: &SharedStore) -> Vec<Lookup> {
    let mut all = Vec::new();
    store
        .for_each_lookup(&mut |l| {
            all.push(l);
            Ok(())
        })
        .unwrap();
    all
}

fn recount(store: &SharedStore) -> ConversationTallies {
    let mut t = ConversationTallies::default();
    store
        .for_each_conversation(&mut |c| {
            t.count(&c, 1);
            Ok(())
        })
        .unwrap();
    t
}

#[tokio::test]
async fn listings_tallies_and_edits_agree_on_every_backend() {
    let backends = backends().await;
    for (name, store) in &backends.stores {
        for n in 0..20u64 {
            let conv = format!("conv_{n:02}");
            let turns: Vec<CapturedTurn> = (0..(n % 3 + 1))
                .map(|t| {
                    let mut turn = turn(&conv, &format!("inf_{n:02}{t}"), &at(n));
                    // A chat app's housekeeping requests count apart.
                    turn.signals.background_task = n % 5 == 3;
                    turn
                })
                .collect();
            if n % 2 == 0 {
                capture(store, turns);
            } else {
                turns.into_iter().for_each(|t| capture(store, vec![t]));
            }
        }
        for n in (0..20).step_by(4) {
            store
                .update_conversation(&format!("conv_{n:02}"), &mut |c| {
                    c.review.status = ReviewStatus::Approved;
                    c.review.threat_type = Some("malware".into());
                    c.review.quality_score = Some(4);
                })
                .unwrap();
        }
        assert!(store.delete_conversation("conv_08").unwrap().is_some());
        assert!(store.delete_conversation("conv_08").unwrap().is_none());
        let tallies = store.tallies().unwrap();
        assert_eq!(tallies, recount(store), "{name}");
        assert_eq!(
            (
                tallies.conversations,
                tallies.approved,
                tallies.background_tasks
            ),
            (16, 4, 3),
            "{name}"
        );
        assert_eq!(tallies.by_threat_type["malware"], 4, "{name}");
        let c = store.conversation("conv_05").unwrap().unwrap();
        assert_eq!(c.inference_ids.len(), 3, "{name}");
        assert_eq!(
            store.inference("inf_052").unwrap().unwrap().turn,
            Some(2),
            "{name}"
        );

        let expected: Vec<String> = (0..20)
            .rev()
            .filter(|n| *n != 8)
            .map(|n| format!("conv_{n:02}"))
            .collect();
        assert_eq!(
            all_ids(store, ConversationScan::default()),
            expected,
            "{name}: newest first, across pages"
        );
        let approved = all_ids(
            store,
            ConversationScan {
                index: Some((IndexField::Status, "approved".into())),
                ..Default::default()
            },
        );
        assert_eq!(
            approved,
            ["conv_16", "conv_12", "conv_04", "conv_00"],
            "{name}"
        );
        let large = all_ids(
            store,
            ConversationScan {
                index: Some((IndexField::Version, "large".into())),
                ..Default::default()
            },
        );
        assert_eq!(large.len(), 12, "{name}: {large:?}");
        let window = all_ids(
            store,
            ConversationScan {
                index: Some((IndexField::User, "bob".into())),
                since: Some(at(5)),
                until: Some(at(10)),
                ..Default::default()
            },
        );
        assert_eq!(
            window,
            ["conv_09", "conv_07", "conv_06", "conv_05"],
            "{name}"
        );
        let bad_cursor = store.list_conversations(
            &ConversationScan {
                cursor: Some("zz".into()),
                limit: 1,
                budget: 1,
                ..Default::default()
            },
            &|_| true,
        );
        assert!(
            matches!(bad_cursor, Err(StoreError::NotFound)),
            "{name}: {bad_cursor:?}"
        );
    }
}

#[tokio::test]
async fn capture_threads_retries_and_lookups_agree_on_every_backend() {
    let backends = backends().await;
    for (name, store) in &backends.stores {
        let conv = flywheel::ids::new_id("conv");
        let (first, second) = (flywheel::ids::new_id("inf"), flywheel::ids::new_id("inf"));
        let mut a = turn(&conv, &first, &at(0));
        a.continuations = vec!["00112233445566778899aabbccddeeff".into()];
        a.record.sticky = Some("user:ana".into());
        a.record.completion_id = Some("chatcmpl-abc".into());
        let mut batch = vec![a, turn(&conv, &second, &at(1))];
        store.store_captured(&mut batch).unwrap();
        let before = store.tallies().unwrap();
        store.store_captured(&mut batch).unwrap();
        assert_eq!(
            store.tallies().unwrap(),
            before,
            "{name}: a retry counts nothing twice"
        );
        assert_eq!(
            store.conversation(&conv).unwrap().unwrap().inference_ids,
            [first.clone(), second.clone()],
            "{name}"
        );
        let point = store
            .thread("00112233445566778899aabbccddeeff")
            .unwrap()
            .unwrap();
        assert_eq!(
            (point.conversation_id.as_str(), point.turn),
            (conv.as_str(), 0)
        );
        assert_eq!(point.sticky.as_deref(), Some("user:ana"), "{name}");
        assert_eq!(
            store.thread("ffffffffffffffffffffffffffffffff").unwrap(),
            None
        );
        assert_eq!(store.thread("not hex").unwrap(), None, "{name}");
        let left = Lookup::Thread {
            key: "00112233445566778899aabbccddeeff".into(),
            inference_id: first.clone(),
        };
        assert!(lookups(store).contains(&left), "{name}");
        assert_eq!(
            store
                .inference_by_completion("chatcmpl-abc")
                .unwrap()
                .map(|r| r.id),
            Some(first.clone()),
            "{name}"
        );
        // Text owners: the first conversation with a text owns it.
        let with_hash = |conv: &str, inference: &str, hash: &str| {
            let mut t = turn(conv, inference, &at(2));
            t.signals = ConversationSignals {
                complete_answer: true,
                answer_chars: 4,
                upstream_error: false,
                text_hash: Some(hash.to_string()),
                duplicate_of: None,
                background_task: false,
            };
            capture(store, vec![t]);
            store
                .conversation(conv)
                .unwrap()
                .unwrap()
                .signals
                .duplicate_of
        };
        assert_eq!(with_hash("conv_t1", "inf_t10", "aa"), None, "{name}");
        assert_eq!(
            with_hash("conv_t2", "inf_t20", "aa").as_deref(),
            Some("conv_t1"),
            "{name}"
        );
        store.delete_conversation(&conv).unwrap();
        assert_eq!(store.inference_by_completion("chatcmpl-abc").unwrap(), None);
        assert_eq!(
            store.thread("00112233445566778899aabbccddeeff").unwrap(),
            None,
            "{name}: a deleted turn is no thread"
        );
        assert!(!lookups(store).contains(&left), "{name}");
    }
}

#[tokio::test]
async fn feedback_keys_audit_and_leases_agree_on_every_backend() {
    let backends = backends().await;
    for (name, store) in &backends.stores {
        let conv = flywheel::ids::new_id("conv");
        let inference = flywheel::ids::new_id("inf");
        capture(store, vec![turn(&conv, &inference, &at(0))]);
        let feedback = |id: &str| FeedbackRecord {
            id: id.into(),
            inference_id: inference.clone(),
            conversation_id: conv.clone(),
            author: "k".into(),
            rating: Some(5),
            thumbs: None,
            threat_type: None,
            severity: None,
            quality_score: None,
            notes: None,
            correction: None,
            approved_for_training: None,
            created_at: at(1),
        };
        store
            .insert_feedback(
                &feedback("fb_1"),
                Some("k:idem"),
                &mut |c| {
                    c.review.feedback_count += 1;
                    c.review.rating_sum += 5;
                    c.review.rating_count += 1;
                },
                None,
            )
            .unwrap();
        assert_eq!(
            store
                .feedback_by_idempotency("k:idem")
                .unwrap()
                .map(|f| f.id),
            Some("fb_1".to_string()),
            "{name}"
        );
        assert_eq!(
            lookups(store),
            [Lookup::Idempotency {
                key: "k:idem".into(),
                feedback_id: "fb_1".into()
            }],
            "{name}"
        );
        assert_eq!(store.feedback_by_idempotency("k:other").unwrap(), None);
        assert_eq!(store.feedback_for(&inference).unwrap().len(), 1, "{name}");
        let tallies = store.tallies().unwrap();
        assert_eq!(
            (tallies.with_feedback, tallies.rating_sum),
            (1, 5),
            "{name}"
        );

        let key = |id: &str| ApiKeyRecord {
            id: id.into(),
            name: "n".into(),
            role: "client".into(),
            hash: format!("h{id}"),
            created_at: at(0),
            revoked_at: None,
        };
        store.insert_key(&key("key_1")).unwrap();
        store.insert_key(&key("key_2")).unwrap();
        let revoked = store.revoke_key("key_1", "2026-01-02T00:00:00Z").unwrap();
        assert_eq!(revoked.revoked_at.as_deref(), Some("2026-01-02T00:00:00Z"));
        assert!(matches!(
            store.revoke_key("nope", "x"),
            Err(StoreError::NotFound)
        ));
        assert_eq!(store.keys().unwrap().len(), 2, "{name}");

        for i in 1..=3 {
            store
                .append_audit(&AuditRecord {
                    id: format!("audit_{i}"),
                    at: "t".into(),
                    actor: "a".into(),
                    action: "x".into(),
                    target: "y".into(),
                    details: serde_json::Value::Null,
                })
                .unwrap();
        }
        let ids = |v: Vec<AuditRecord>| v.into_iter().map(|a| a.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.audit(None, 10).unwrap()),
            ["audit_3", "audit_2", "audit_1"],
            "{name}"
        );
        assert_eq!(ids(store.audit(Some("audit_3"), 1).unwrap()), ["audit_2"]);

        let ttl = Duration::from_secs(30);
        assert!(
            store.try_lease("poller", "replica-a", ttl).unwrap(),
            "{name}"
        );
        assert!(
            store.try_lease("poller", "replica-a", ttl).unwrap(),
            "{name}: renewed"
        );
        let other = store.try_lease("poller", "replica-b", ttl).unwrap();
        // One process holds every lease of an embedded store; PostgreSQL
        // gives a held lease to nobody else until it expires.
        assert_eq!(other, *name == "sled", "{name}");
    }
}

#[tokio::test]
async fn alerts_and_their_webhook_queue_agree_on_every_backend() {
    let backends = backends().await;
    for (name, store) in &backends.stores {
        let alert = |id: &str| an_alert(id, &at(0));
        let queued = |id: &str| QueuedWebhook {
            alert_id: id.into(),
            attempts: 0,
            next_attempt_ms: 0,
        };
        // Raised out of order; the queue gives the oldest alert first.
        let [first, second, quiet] = ["alert_01A", "alert_01B", "alert_01C"];
        store
            .raise_alert(&alert(second), Some(&queued(second)))
            .unwrap();
        store
            .raise_alert(&alert(first), Some(&queued(first)))
            .unwrap();
        store.raise_alert(&alert(quiet), None).unwrap();
        for id in [first, second, quiet] {
            assert_eq!(store.alert(id).unwrap(), Some(alert(id)), "{name}");
        }
        assert_eq!(
            store.queued_webhooks(10).unwrap(),
            [queued(first), queued(second)],
            "{name}"
        );
        assert_eq!(store.queued_webhooks(1).unwrap(), [queued(first)], "{name}");

        let retried = QueuedWebhook {
            attempts: 2,
            next_attempt_ms: 1_700_000_000_000,
            ..queued(first)
        };
        store.requeue_webhook(&retried).unwrap();
        store.dequeue_webhook(second).unwrap();
        // Taking off what is not queued is no error.
        store.dequeue_webhook(second).unwrap();
        assert_eq!(store.queued_webhooks(10).unwrap(), [retried], "{name}");
        // Acknowledging an alert leaves its delivery queued.
        let acknowledged = AlertRecord {
            state: "acknowledged".into(),
            ..alert(first)
        };
        store.put_alert(&acknowledged).unwrap();
        assert_eq!(store.queued_webhooks(10).unwrap().len(), 1, "{name}");
        assert_eq!(store.alert(first).unwrap(), Some(acknowledged), "{name}");
    }
}
