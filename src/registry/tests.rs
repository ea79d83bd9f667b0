use super::*;
use crate::routing::{Choice, RouteError};

fn config(extra_version: bool) -> Arc<Config> {
    let extra = if extra_version {
        "  [[models.versions]]\n  name = \"ft1\"\n  provider = \"a\"\n  model = \"ft:gpt-4o-mini:x\"\n"
    } else {
        ""
    };
    let toml = format!(
        r#"
[[providers]]
name = "a"
base_url = "http://127.0.0.1:1"
[[models]]
name = "triage"
model_type = "threat_detection"
production = "base"
  [[models.versions]]
  name = "base"
  provider = "a"
  model = "gpt-4o-mini"
  [[models.versions]]
  name = "large"
  provider = "a"
  model = "gpt-4o"
{extra}"#
    );
    Arc::new(Config::from_toml_str(&toml, "test", Vec::new()).unwrap())
}

fn open(dir: &std::path::Path, extra_version: bool) -> Registry {
    let store = crate::store::open(dir).unwrap();
    Registry::open(store, config(extra_version)).unwrap()
}

fn traffic(base: f64, large: f64) -> Change {
    Change::Traffic {
        weights: BTreeMap::from([("base".into(), base), ("large".into(), large)]),
        shadow: None,
    }
}

fn request<'a>(change: Change, expected: Option<u64>) -> Request<'a> {
    Request {
        alias: "triage",
        expected_revision: expected,
        actor: "key_admin",
        reason: "test",
        change,
    }
}

#[test]
fn the_config_seeds_production_at_full_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(dir.path(), false);
    let record = registry.alias("triage").unwrap();
    assert_eq!((record.production.as_str(), record.revision), ("base", 1));
    let route = registry
        .table()
        .resolve("triage", Choice::Sticky("k"))
        .unwrap();
    assert_eq!(route.version.as_deref(), Some("base"));
    assert!(!route.candidate);
    let history = registry.history("triage", None, 10).unwrap();
    assert_eq!(history[0].action, "seed");
}

#[test]
fn changes_check_the_revision_and_survive_a_restart_while_new_config_versions_join() {
    let dir = tempfile::tempdir().unwrap();
    {
        let registry = open(dir.path(), false);
        let moved = registry
            .change(request(traffic(90.0, 10.0), Some(7)))
            .unwrap_err();
        assert!(matches!(
            moved,
            RegistryError::RevisionMoved { current: 1, .. }
        ));
        let changed = registry
            .change(request(traffic(90.0, 10.0), Some(1)))
            .unwrap();
        assert_eq!(changed.revision, 2);
    }
    let registry = {
        // sled's flusher may hold the lock a moment after the drop.
        let mut tries = 0;
        loop {
            match crate::store::open(dir.path()) {
                Ok(store) => break Registry::open(store, config(true)).unwrap(),
                Err(StoreError::Locked { .. }) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        }
    };
    let record = registry.alias("triage").unwrap();
    assert_eq!(weights_of(&record)["large"], 10.0);
    assert_eq!(
        record.version("ft1").unwrap().state,
        VersionState::Candidate
    );
    assert_eq!(record.revision, 3);
    let actions: Vec<String> = registry
        .history("triage", None, 10)
        .unwrap()
        .into_iter()
        .map(|h| h.action)
        .collect();
    assert_eq!(actions, ["register", "traffic", "seed"]);
}

#[test]
fn sticky_keys_keep_their_version_and_the_split_follows_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(dir.path(), false);
    registry.change(request(traffic(70.0, 30.0), None)).unwrap();
    let table = registry.table();
    let version = |key: &str| {
        table
            .resolve("triage", Choice::Sticky(key))
            .unwrap()
            .version
            .unwrap()
            .to_string()
    };
    let large = (0..10_000)
        .filter(|i| version(&format!("conv_{i}")) == "large")
        .count();
    assert!((large as f64 / 10_000.0 - 0.30).abs() < 0.02, "{large}");
    assert_eq!(version("user:alice"), version("user:alice"));

    // Moving 10 points from large back to base moves only keys that were on large.
    let before: Vec<String> = (0..2_000).map(|i| version(&format!("conv_{i}"))).collect();
    registry.change(request(traffic(80.0, 20.0), None)).unwrap();
    let table = registry.table();
    for (i, was) in before.iter().enumerate() {
        let now = table
            .resolve("triage", Choice::Sticky(&format!("conv_{i}")))
            .unwrap()
            .version
            .unwrap();
        if was == "base" {
            assert_eq!(&*now, "base");
        }
    }
}

#[test]
fn a_forced_variant_wins_and_an_unknown_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open(dir.path(), false);
    let table = registry.table();
    let forced = table.resolve("triage", Choice::Forced("large")).unwrap();
    assert_eq!(forced.version.as_deref(), Some("large"));
    assert!(!forced.candidate, "a forced version never falls back");
    assert!(matches!(
        table.resolve("triage", Choice::Forced("nope")),
        Err(RouteError::UnknownVersion { .. })
    ));
    let other = table.resolve("gpt-4.1", Choice::Forced("large")).unwrap();
    assert!(other.alias.is_none());
    assert_eq!(&*other.upstream_model, "gpt-4.1");
}
