use super::*;
use crate::store::sled_store::codec;
use crate::store::sled_store::tests::reopen;
use crate::store::{CapturedTurn, InferenceRecord, Store};

/// The id of a record made `ms` milliseconds into the test's time; its
/// conversation shares its ULID, as a generated conversation's does.
fn ids(ms: u64) -> (String, String) {
    let ulid = ulid::Ulid::from_parts(1_765_000_000_000 + ms, u128::from(ms) * 7 + 1);
    (format!("inf_{ulid}"), format!("conv_{ulid}"))
}

fn turn(ms: u64) -> CapturedTurn {
    let (id, conversation) = ids(ms);
    let mut record = InferenceRecord::bare(&id, &conversation);
    record.request =
        serde_json::json!({"messages": [{"role": "user", "content": format!("alert {ms}")}]});
    CapturedTurn::plain(record)
}

fn capture(store: &SledStore, at: impl IntoIterator<Item = u64>) {
    let mut batch: Vec<_> = at.into_iter().map(turn).collect();
    store.store_captured(&mut batch).unwrap();
}

fn read(store: &SledStore, ms: u64) -> Option<String> {
    let record = store.inference(&ids(ms).0).unwrap()?;
    Some(
        record.request["messages"][0]["content"]
            .as_str()?
            .to_string(),
    )
}

fn entries(store: &SledStore) -> Vec<Vec<u8>> {
    store
        .inferences
        .iter()
        .keys()
        .map(|k| k.unwrap().to_vec())
        .collect()
}

fn groups(store: &SledStore) -> usize {
    entries(store)
        .iter()
        .filter(|k| k.first() == Some(&GROUP_TAG))
        .count()
}

#[test]
fn a_batch_is_written_as_groups_and_every_record_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    // Out of order within the batch: it is sorted before grouping.
    capture(&store, (0..20).rev());
    assert_eq!(entries(&store).len(), 3, "groups of 8, 8 and 4");
    for ms in 0..20 {
        assert_eq!(read(&store, ms), Some(format!("alert {ms}")));
        // A conversation of one turn is kept as its record, in a group.
        let conversation = store.conversation(&ids(ms).1).unwrap().unwrap();
        assert_eq!(conversation.inference_ids, [ids(ms).0]);
    }
    assert_eq!(read(&store, 20), None);
    assert_eq!(read(&store, 100), None);
}

#[test]
fn a_record_stored_after_later_ones_is_written_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    capture(&store, [10, 20, 30]);
    // 15 and 25 fall inside the group's span, 40 after it.
    capture(&store, [15, 25, 40]);
    let keys = entries(&store);
    assert!(keys.contains(&codec::id_key(&ids(15).0)));
    assert!(keys.contains(&codec::id_key(&ids(25).0)));
    assert_eq!(groups(&store), 2, "10-30, then 40");
    for ms in [10, 15, 20, 25, 30, 40] {
        assert_eq!(read(&store, ms), Some(format!("alert {ms}")));
    }
    // The bound holds across a restart: 35 comes before 40.
    drop(store);
    let store = reopen(dir.path());
    capture(&store, [35, 50]);
    assert!(entries(&store).contains(&codec::id_key(&ids(35).0)));
    assert_eq!(groups(&store), 3);
    for ms in [10, 15, 20, 25, 30, 35, 40, 50] {
        assert_eq!(read(&store, ms), Some(format!("alert {ms}")));
    }
}

#[test]
fn a_retried_batch_stores_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    capture(&store, 0..5);
    capture(&store, 0..7);
    assert_eq!(entries(&store).len(), 2, "the first five's group, then 5-6");
    assert_eq!(store.tallies().unwrap().conversations, 7);
}

#[test]
fn removing_members_rewrites_their_group_and_the_last_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    capture(&store, [0, 1, 2, 3]);
    capture(&store, [2_000]);
    capture(&store, [1_500]); // alone, inside no group's span but before 2,000
    let delete = |ms: u64| {
        let record = store.inference(&ids(ms).0).unwrap().unwrap();
        store.delete_inference(&record, &mut |_, _| {}).unwrap();
    };
    // The first member: the group keeps its key.
    delete(0);
    assert_eq!(read(&store, 0), None);
    for ms in [1, 2, 3, 1_500, 2_000] {
        assert_eq!(read(&store, ms), Some(format!("alert {ms}")));
    }
    assert!(store.conversation(&ids(0).1).unwrap().is_none());
    delete(1_500);
    assert_eq!(read(&store, 1_500), None);
    for ms in [1, 2, 3] {
        delete(ms);
    }
    assert_eq!(entries(&store).len(), 1, "only 2,000's group is left");
    assert_eq!(read(&store, 2_000), Some("alert 2000".into()));
    // A whole conversation's deletion goes the same way.
    store.delete_conversation(&ids(2_000).1).unwrap();
    assert!(entries(&store).is_empty());
}

#[test]
fn records_between_two_keys_merge_groups_and_records_alone_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    capture(&store, (0..30).map(|n| n * 10));
    capture(&store, [5, 95, 205, 305]);
    capture(&store, [155, 300]);
    let mut expected: Vec<u64> = (0..30).map(|n| n * 10).collect();
    expected.extend([5, 95, 205, 305, 155]);
    expected.sort_unstable();
    let before = ids(290).0;
    let within: Vec<u64> = expected.iter().copied().filter(|ms| *ms < 290).collect();
    // Paged as retention pages: three at a time after the last one read.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .inferences_between(after.as_deref(), &before, 3)
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        after = page.last().map(|r| r.id.clone());
        seen.extend(page.into_iter().map(|r| r.id));
    }
    let want: Vec<String> = within.iter().map(|ms| ids(*ms).0).collect();
    assert_eq!(seen, want);
    // After a key held alone, and after one no record has.
    let page = store
        .inferences_between(Some(&ids(95).0), &ids(130).0, 10)
        .unwrap();
    let got: Vec<_> = page.into_iter().map(|r| r.id).collect();
    assert_eq!(got, [ids(100).0, ids(110).0, ids(120).0]);
    let page = store
        .inferences_between(Some(&ids(101).0), &ids(125).0, 10)
        .unwrap();
    assert_eq!(page.len(), 2);
    // A client-named id sorts after every ULID: nothing comes after it.
    let page = store
        .inferences_between(Some("ticket-1"), &ids(1_000).0, 10)
        .unwrap();
    assert!(page.is_empty());
}

#[test]
fn a_damaged_group_reads_as_corrupt_not_as_a_panic() {
    for value in [
        vec![],
        vec![GROUP_FORMAT],
        vec![9, 1],
        vec![GROUP_FORMAT, 2, 0, 0],
        [
            &[GROUP_FORMAT, 1][..],
            &[0; 16],
            &200u32.to_le_bytes(),
            b"short",
        ]
        .concat(),
    ] {
        assert!(
            matches!(members(&value), Err(StoreError::Corrupt { .. })),
            "{value:?}"
        );
    }
    let two = [([1; 16], &b"ab"[..]), ([2; 16], &b"cde"[..])];
    let value = encode_group(two.iter().map(|(u, r)| (u, *r)));
    let read: Vec<_> = members(&value)
        .unwrap()
        .into_iter()
        .map(|(u, r)| (u, value[r].to_vec()))
        .collect();
    assert_eq!(
        read,
        [([1; 16], b"ab".to_vec()), ([2; 16], b"cde".to_vec())]
    );
}

#[test]
fn a_store_of_a_newer_layout_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    store.meta.insert(b"store_layout", &b"4"[..]).unwrap();
    store.meta.flush().unwrap();
    drop(store);
    let refused = loop {
        match SledStore::open(dir.path()) {
            Err(StoreError::Locked { .. }) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            opened => break opened.err().unwrap(),
        }
    };
    assert!(matches!(refused, StoreError::NewerLayout { .. }));
    let message = refused.to_string();
    assert!(message.contains("store layout 4"), "{message}");
    assert!(message.contains("newer release"), "{message}");
}
