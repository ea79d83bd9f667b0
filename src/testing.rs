//! For unit tests of the services' steps: the parts their contexts are
//! built from — a temporary store, the config, the registry and the
//! upstreams — without the application. The one provider listens
//! nowhere, so a step that reaches it sees a refused connection.

use crate::config::{Config, Secrets};
use crate::registry::Registry;
use crate::store::SharedStore;
use crate::upstream::Upstreams;
use std::sync::Arc;

pub struct Parts {
    /// Held so the store's directory outlives the test.
    _dir: tempfile::TempDir,
    pub store: SharedStore,
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    pub upstreams: Arc<Upstreams>,
}

/// The parts for one alias `triage` (production `base`, candidate
/// `large`), with `extra` TOML sections added to the config.
pub fn parts(extra: &str) -> Parts {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[server]
data_dir = "{data}"

[[providers]]
name = "dead"
base_url = "http://127.0.0.1:1/v1"
max_retries = 0

[[models]]
name = "triage"
model_type = "threat_detection"
production = "base"
  [[models.versions]]
  name = "base"
  provider = "dead"
  model = "gpt-4o-mini"
  [[models.versions]]
  name = "large"
  provider = "dead"
  model = "gpt-4o"

{extra}
"#,
        data = dir.path().display()
    );
    let config = Arc::new(Config::from_toml_str(&toml, "test", Vec::new()).unwrap());
    let store = crate::store::open(dir.path()).unwrap();
    let registry = Arc::new(Registry::open(store.clone(), config.clone()).unwrap());
    let upstreams = Arc::new(Upstreams::new(&config, &Secrets::default()).unwrap());
    Parts {
        _dir: dir,
        store,
        config,
        registry,
        upstreams,
    }
}

impl Parts {
    pub fn evaluation(&self) -> Arc<crate::evaluation::Context> {
        let config = &self.config;
        let extractor = crate::evaluation::extract::Extractor::new(
            &config.evaluation.extractor,
            &config.taxonomy,
        )
        .unwrap();
        Arc::new(crate::evaluation::Context {
            store: self.store.clone(),
            registry: self.registry.clone(),
            upstreams: self.upstreams.clone(),
            config: config.evaluation.clone(),
            threat_types: config.taxonomy.threat_types.clone(),
            extractor: Arc::new(extractor),
            runner: crate::evaluation::Runner::default(),
            alert_hook: Arc::new(crate::evaluation::AlertHook::new(&config.evaluation).unwrap()),
        })
    }

    pub fn fine_tuning(&self) -> Arc<crate::finetune::Context> {
        Arc::new(crate::finetune::Context {
            store: self.store.clone(),
            registry: self.registry.clone(),
            upstreams: self.upstreams.clone(),
            config: self.config.clone(),
            jobs: crate::finetune::Jobs::default(),
        })
    }

    pub fn guardrails(&self) -> Arc<crate::experiment::Guardrails> {
        Arc::new(crate::experiment::Guardrails {
            store: self.store.clone(),
            registry: self.registry.clone(),
            config: self.config.clone(),
            alerts: Arc::new(crate::evaluation::AlertHook::new(&self.config.evaluation).unwrap()),
        })
    }
}
