//! The registry's changes as plain functions: each takes an alias's record
//! and returns the next one (revision one higher, buckets rebalanced) with
//! a summary for its history, or says why it cannot be made.

use crate::routing::buckets;
use crate::store::{ModelAliasRecord, ModelVersionRecord, VersionState};
use std::collections::BTreeMap;

/// One change an admin (or a guardrail, or a finished job) asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Register {
        name: String,
        provider: String,
        model: String,
        origin: String,
    },
    Traffic {
        weights: BTreeMap<String, f64>,
        shadow: Option<Vec<String>>,
    },
    Promote {
        version: String,
        weights: Option<BTreeMap<String, f64>>,
        /// The gate's refusal an admin overrode, for the audit log; `None`
        /// for a promotion the gate allowed.
        forced: Option<serde_json::Value>,
    },
    Rollback,
    /// A guardrail takes the candidate's traffic away (to production).
    Guardrail {
        version: String,
    },
}

impl Change {
    pub fn action(&self) -> &'static str {
        match self {
            Change::Register { .. } => "register",
            Change::Traffic { .. } => "traffic",
            Change::Promote { .. } => "promote",
            Change::Rollback => "rollback",
            Change::Guardrail { .. } => "guardrail",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChangeError {
    #[error("{message}")]
    Invalid {
        message: String,
        param: Option<String>,
    },
    #[error("{0}")]
    Conflict(String),
}

fn invalid(message: impl Into<String>, param: &str) -> ChangeError {
    ChangeError::Invalid {
        message: message.into(),
        param: Some(param.to_string()),
    }
}

/// What a change did, for the history.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub record: ModelAliasRecord,
    pub from: Option<String>,
    pub to: Option<String>,
}

pub fn weights_of(record: &ModelAliasRecord) -> BTreeMap<String, f64> {
    record
        .versions
        .iter()
        .map(|v| (v.name.clone(), v.weight))
        .collect()
}

/// The most versions one alias may have: slot owners are one byte.
pub const MAX_VERSIONS: usize = 255;

/// Applies `change` to `record`. `providers` are the configured providers'
/// names; `at` is the time of the change.
pub fn apply(
    record: &ModelAliasRecord,
    change: &Change,
    providers: &[String],
    at: &str,
) -> Result<Applied, ChangeError> {
    let mut next = record.clone();
    next.revision += 1;
    next.updated_at = at.to_string();
    let (from, to) = match change {
        Change::Register {
            name,
            provider,
            model,
            origin,
        } => {
            register(&mut next, name, provider, model, origin, providers, at)?;
            (None, Some(name.clone()))
        }
        Change::Traffic { weights, shadow } => {
            set_weights(&mut next, weights)?;
            if let Some(shadow) = shadow {
                set_shadows(&mut next, shadow)?;
            }
            (None, None)
        }
        Change::Promote {
            version, weights, ..
        } => promote(&mut next, version, weights.as_ref())?,
        Change::Rollback => rollback(&mut next)?,
        Change::Guardrail { version } => guardrail(&mut next, version)?,
    };
    Ok(Applied {
        record: next,
        from,
        to,
    })
}

fn register(
    next: &mut ModelAliasRecord,
    name: &str,
    provider: &str,
    model: &str,
    origin: &str,
    providers: &[String],
    at: &str,
) -> Result<(), ChangeError> {
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c));
    if !name_ok {
        return Err(invalid(
            "`name` must be 1–64 characters of letters, digits, `.`, `_`, `:` or `-`",
            "name",
        ));
    }
    if next.version(name).is_some() {
        return Err(ChangeError::Conflict(format!(
            "alias `{}` already has a version named `{name}`",
            next.alias
        )));
    }
    if !providers.iter().any(|p| p == provider) {
        return Err(invalid(
            format!(
                "no provider named `{provider}` that serves chat is configured (known: {})",
                providers.join(", ")
            ),
            "provider",
        ));
    }
    if model.trim().is_empty() {
        return Err(invalid("`model` must not be empty", "model"));
    }
    if next.versions.len() >= MAX_VERSIONS {
        return Err(ChangeError::Conflict(format!(
            "alias `{}` has the most versions it may have ({MAX_VERSIONS})",
            next.alias
        )));
    }
    next.versions.push(ModelVersionRecord {
        name: name.to_string(),
        provider: provider.to_string(),
        model: model.to_string(),
        state: VersionState::Candidate,
        origin: origin.to_string(),
        weight: 0.0,
        shadow: false,
        created_at: at.to_string(),
    });
    Ok(())
}

/// Checks that `weights` name known versions, each 0–100 in steps of
/// 0.01, summing to 100; versions not named get 0.
fn checked_slots(
    record: &ModelAliasRecord,
    weights: &BTreeMap<String, f64>,
) -> Result<Vec<u32>, ChangeError> {
    let mut slots = vec![0u32; record.versions.len()];
    for (name, &w) in weights {
        let param = format!("weights.{name}");
        let index = record
            .versions
            .iter()
            .position(|v| &v.name == name)
            .ok_or_else(|| {
                invalid(
                    format!("alias `{}` has no version named `{name}`", record.alias),
                    &param,
                )
            })?;
        slots[index] = buckets::weight_to_slots(w).ok_or_else(|| {
            invalid(
                format!("the weight of `{name}` must be a percentage from 0 to 100 in steps of 0.01, not {w}"),
                &param,
            )
        })?;
    }
    let total: u32 = slots.iter().sum();
    if total as usize != buckets::SLOTS {
        let sum = buckets::slots_to_weight(total);
        return Err(invalid(
            format!("the weights must add up to 100, not {sum}"),
            "weights",
        ));
    }
    Ok(slots)
}

fn set_weights(
    next: &mut ModelAliasRecord,
    weights: &BTreeMap<String, f64>,
) -> Result<(), ChangeError> {
    let slots = checked_slots(next, weights)?;
    apply_slots(next, &slots);
    Ok(())
}

/// Sets each version's weight from its slots, rebalances the table, and
/// brings a retired version that gets traffic back as a candidate.
fn apply_slots(next: &mut ModelAliasRecord, slots: &[u32]) {
    let names: Vec<&str> = next.versions.iter().map(|v| v.name.as_str()).collect();
    let current = buckets::decode(&next.buckets).unwrap_or_else(|| {
        let production = next
            .versions
            .iter()
            .position(|v| v.name == next.production)
            .unwrap_or(0);
        buckets::all_to(production as u8)
    });
    next.buckets = buckets::encode(&buckets::rebalance(&current, slots, &names));
    for (v, &s) in next.versions.iter_mut().zip(slots) {
        v.weight = buckets::slots_to_weight(s);
        if s > 0 && v.state == VersionState::Retired {
            v.state = VersionState::Candidate;
        }
    }
}

fn set_shadows(next: &mut ModelAliasRecord, shadow: &[String]) -> Result<(), ChangeError> {
    for name in shadow {
        let Some(v) = next.version(name) else {
            return Err(invalid(
                format!("alias `{}` has no version named `{name}`", next.alias),
                "shadow",
            ));
        };
        if v.name == next.production || v.weight > 0.0 {
            return Err(invalid(
                format!("`{name}` serves live traffic; a shadow version must have weight 0"),
                "shadow",
            ));
        }
    }
    for v in &mut next.versions {
        v.shadow = shadow.contains(&v.name);
        if v.shadow && v.state == VersionState::Retired {
            v.state = VersionState::Candidate;
        }
    }
    Ok(())
}

fn make_production(next: &mut ModelAliasRecord, version: &str) {
    let old = std::mem::replace(&mut next.production, version.to_string());
    for v in &mut next.versions {
        if v.name == version {
            v.state = VersionState::Production;
            v.shadow = false;
        } else if v.name == old {
            v.state = if v.weight > 0.0 {
                VersionState::Candidate
            } else {
                VersionState::Retired
            };
        }
    }
}

fn promote(
    next: &mut ModelAliasRecord,
    version: &str,
    weights: Option<&BTreeMap<String, f64>>,
) -> Result<(Option<String>, Option<String>), ChangeError> {
    if next.version(version).is_none() {
        return Err(invalid(
            format!("alias `{}` has no version named `{version}`", next.alias),
            "version",
        ));
    }
    if next.production == version {
        return Err(ChangeError::Conflict(format!(
            "`{version}` is already the production version of `{}`",
            next.alias
        )));
    }
    let all = BTreeMap::from([(version.to_string(), 100.0)]);
    let slots = checked_slots(next, weights.unwrap_or(&all))?;
    let old = next.production.clone();
    apply_slots(next, &slots);
    next.previous_production.push(old.clone());
    make_production(next, version);
    Ok((Some(old), Some(version.to_string())))
}

fn rollback(next: &mut ModelAliasRecord) -> Result<(Option<String>, Option<String>), ChangeError> {
    let Some(previous) = next.previous_production.pop() else {
        return Err(ChangeError::Conflict(format!(
            "alias `{}` has no earlier production version to roll back to",
            next.alias
        )));
    };
    if next.version(&previous).is_none() {
        return Err(ChangeError::Conflict(format!(
            "the earlier production version `{previous}` is no longer registered"
        )));
    }
    let current = next.production.clone();
    let all = BTreeMap::from([(previous.clone(), 100.0)]);
    let slots = checked_slots(next, &all)?;
    apply_slots(next, &slots);
    make_production(next, &previous);
    Ok((Some(current), Some(previous)))
}

fn guardrail(
    next: &mut ModelAliasRecord,
    version: &str,
) -> Result<(Option<String>, Option<String>), ChangeError> {
    if next.production == version {
        return Err(invalid("a guardrail never stops production", "version"));
    }
    let mut weights = weights_of(next);
    let Some(taken) = weights.insert(version.to_string(), 0.0) else {
        return Err(invalid(format!("no version named `{version}`"), "version"));
    };
    *weights.entry(next.production.clone()).or_default() += taken;
    set_weights(next, &weights)?;
    Ok((Some(version.to_string()), Some(next.production.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ModelAliasRecord {
        let version = |name: &str, state| ModelVersionRecord {
            name: name.into(),
            provider: "sim".into(),
            model: format!("m-{name}"),
            state,
            origin: "config".into(),
            weight: 0.0,
            shadow: false,
            created_at: "t0".into(),
        };
        let mut base = version("base", VersionState::Production);
        base.weight = 100.0;
        ModelAliasRecord {
            alias: "triage".into(),
            model_type: "threat_detection".into(),
            revision: 1,
            production: "base".into(),
            previous_production: Vec::new(),
            versions: vec![base, version("large", VersionState::Candidate)],
            buckets: buckets::encode(&buckets::all_to(0)),
            updated_at: "t0".into(),
        }
    }

    fn providers() -> Vec<String> {
        vec!["sim".into()]
    }

    fn weights(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(n, w)| (n.to_string(), *w)).collect()
    }

    fn traffic(pairs: &[(&str, f64)]) -> Change {
        Change::Traffic {
            weights: weights(pairs),
            shadow: None,
        }
    }

    #[test]
    fn weights_must_name_known_versions_and_add_up_to_100() {
        let r = record();
        let err = |c: &Change| apply(&r, c, &providers(), "t1").unwrap_err();
        assert!(
            matches!(err(&traffic(&[("base", 90.0), ("nope", 10.0)])), ChangeError::Invalid { param: Some(p), .. } if p == "weights.nope")
        );
        assert!(
            matches!(err(&traffic(&[("base", 90.0), ("large", 5.0)])), ChangeError::Invalid { param: Some(p), .. } if p == "weights")
        );
        assert!(matches!(
            err(&traffic(&[("base", 99.995), ("large", 0.005)])),
            ChangeError::Invalid { .. }
        ));
        let ok = apply(
            &r,
            &traffic(&[("base", 90.0), ("large", 10.0)]),
            &providers(),
            "t1",
        )
        .unwrap();
        assert_eq!(ok.record.revision, 2);
        assert_eq!(
            weights_of(&ok.record),
            weights(&[("base", 90.0), ("large", 10.0)])
        );
        let table = buckets::decode(&ok.record.buckets).unwrap();
        assert_eq!(buckets::counts(&table, 2), [9000, 1000]);
    }

    #[test]
    fn promote_then_rollback_restores_the_previous_production_at_100() {
        let r = apply(
            &record(),
            &traffic(&[("base", 80.0), ("large", 20.0)]),
            &providers(),
            "t1",
        )
        .unwrap()
        .record;
        let promoted = apply(
            &r,
            &Change::Promote {
                version: "large".into(),
                weights: None,
                forced: None,
            },
            &providers(),
            "t2",
        )
        .unwrap();
        assert_eq!(
            (promoted.from.as_deref(), promoted.to.as_deref()),
            (Some("base"), Some("large"))
        );
        let p = &promoted.record;
        assert_eq!(p.production, "large");
        assert_eq!(p.version("base").unwrap().state, VersionState::Retired);
        assert_eq!(p.version("large").unwrap().state, VersionState::Production);
        assert_eq!(
            weights_of(&promoted.record),
            weights(&[("base", 0.0), ("large", 100.0)])
        );

        let back = apply(p, &Change::Rollback, &providers(), "t3").unwrap();
        assert_eq!(back.record.production, "base");
        assert_eq!(
            weights_of(&back.record),
            weights(&[("base", 100.0), ("large", 0.0)])
        );
        assert_eq!(
            back.record.version("large").unwrap().state,
            VersionState::Retired
        );
        assert!(matches!(
            apply(&back.record, &Change::Rollback, &providers(), "t4"),
            Err(ChangeError::Conflict(_))
        ));
    }

    #[test]
    fn promoting_with_weights_keeps_the_old_production_as_a_candidate() {
        let promoted = apply(
            &record(),
            &Change::Promote {
                version: "large".into(),
                weights: Some(weights(&[("large", 90.0), ("base", 10.0)])),
                forced: None,
            },
            &providers(),
            "t1",
        )
        .unwrap()
        .record;
        assert_eq!(
            promoted.version("base").unwrap().state,
            VersionState::Candidate
        );
        assert_eq!(promoted.previous_production, ["base"]);
    }

    #[test]
    fn registration_checks_name_provider_and_uniqueness() {
        let reg = |name: &str, provider: &str| Change::Register {
            name: name.into(),
            provider: provider.into(),
            model: "ft:gpt-4o-mini:x".into(),
            origin: "api".into(),
        };
        let r = record();
        assert!(matches!(
            apply(&r, &reg("base", "sim"), &providers(), "t"),
            Err(ChangeError::Conflict(_))
        ));
        assert!(matches!(
            apply(&r, &reg("bad name", "sim"), &providers(), "t"),
            Err(ChangeError::Invalid { .. })
        ));
        assert!(matches!(
            apply(&r, &reg("ft1", "nope"), &providers(), "t"),
            Err(ChangeError::Invalid { .. })
        ));
        let ok = apply(&r, &reg("ft1", "sim"), &providers(), "t")
            .unwrap()
            .record;
        let v = ok.version("ft1").unwrap();
        assert_eq!(
            (v.state, v.weight, v.origin.as_str()),
            (VersionState::Candidate, 0.0, "api")
        );
    }

    #[test]
    fn shadows_must_carry_no_live_traffic() {
        let r = record();
        let shadow = |names: &[&str], w: &[(&str, f64)]| Change::Traffic {
            weights: weights(w),
            shadow: Some(names.iter().map(|n| n.to_string()).collect()),
        };
        assert!(
            apply(
                &r,
                &shadow(&["base"], &[("base", 100.0)]),
                &providers(),
                "t"
            )
            .is_err()
        );
        assert!(
            apply(
                &r,
                &shadow(&["large"], &[("base", 90.0), ("large", 10.0)]),
                &providers(),
                "t"
            )
            .is_err()
        );
        let ok = apply(
            &r,
            &shadow(&["large"], &[("base", 100.0)]),
            &providers(),
            "t",
        )
        .unwrap();
        assert!(ok.record.version("large").unwrap().shadow);
    }

    #[test]
    fn a_guardrail_gives_the_candidates_share_to_production() {
        let r = apply(
            &record(),
            &traffic(&[("base", 70.0), ("large", 30.0)]),
            &providers(),
            "t1",
        )
        .unwrap()
        .record;
        let stopped = apply(
            &r,
            &Change::Guardrail {
                version: "large".into(),
            },
            &providers(),
            "t2",
        )
        .unwrap();
        assert_eq!(
            weights_of(&stopped.record),
            weights(&[("base", 100.0), ("large", 0.0)])
        );
        assert_eq!(stopped.record.production, "base");
    }
}
