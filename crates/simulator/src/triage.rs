//! The simulator's "models": keyword rules (see `rules`) over the alert text
//! yield a threat type, a severity and a rationale naming the matched
//! indicators. Deterministic — the same prompt always gets the same verdict —
//! and the small models know fewer indicators than the large ones, so model
//! versions score differently for honest reasons.

use super::rules::{CRITICAL_SEVERITY, FALLBACK, HIGH_SEVERITY, PRIORITY, RULES};

/// Severities, lowest first, as the models may state them.
pub const SEVERITIES: &[&str] = &["informational", "low", "medium", "high", "critical"];

/// At most this many indicators are named in a rationale.
const NAMED: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub threat_type: &'static str,
    pub severity: &'static str,
    /// The words of the text that matched the winning threat type, in rule
    /// order.
    pub indicators: Vec<String>,
    /// Why this severity, as a clause for the rationale.
    severity_reason: String,
}

/// Whether `model` is one of the large models (the full rule set).
pub fn is_large(model: &str) -> bool {
    !(model.contains("mini") || model.contains("small"))
}

impl Verdict {
    /// The answer as the model says it.
    pub fn answer(&self) -> String {
        format!(
            "Threat type: {}\nSeverity: {}\nRationale: {} {}",
            self.threat_type,
            self.severity,
            self.threat_sentence(),
            self.severity_sentence()
        )
    }

    /// Why this threat type: the indicators that matched.
    pub fn threat_sentence(&self) -> String {
        if self.indicators.is_empty() {
            return "No known indicator matched, so the activity stays suspicious until an analyst reviews it."
                .to_string();
        }
        let named: Vec<String> = self
            .indicators
            .iter()
            .take(NAMED)
            .map(|i| format!("'{i}'"))
            .collect();
        let what = if named.len() == 1 {
            "an indicator"
        } else {
            "indicators"
        };
        format!(
            "The alert mentions {}, {what} of {}.",
            named.join(", "),
            self.threat_type.replace('_', " ")
        )
    }

    /// Why this severity.
    pub fn severity_sentence(&self) -> String {
        format!(
            "Severity is {} because {}.",
            self.severity, self.severity_reason
        )
    }
}

/// Classifies `text` as a large (`large == true`) or small model would.
pub fn classify(text: &str, large: bool) -> Verdict {
    let lower = text.to_lowercase();
    // Per threat type, in PRIORITY order: (strongest weight, matches, words).
    let mut scores: Vec<(u32, u32, Vec<String>)> = vec![(0, 0, Vec::new()); PRIORITY.len()];
    for rule in RULES.iter().filter(|r| large || r.small) {
        let Some(slot) = PRIORITY
            .iter()
            .position(|t| *t == rule.threat)
            .and_then(|i| scores.get_mut(i))
        else {
            continue;
        };
        for indicator in rule.indicators {
            if let Some(word) = find(&lower, indicator) {
                slot.0 = slot.0.max(rule.weight);
                slot.1 += 1;
                if !slot.2.iter().any(|w| w == word) {
                    slot.2.push(word.to_string());
                }
            }
        }
    }
    // The strongest indicator decides; more indicators of equal strength
    // break ties; the analyst's order breaks the rest (max_by_key keeps the
    // last maximum, hence the reversed iteration).
    let best = PRIORITY
        .iter()
        .zip(scores)
        .filter(|(_, (weight, _, _))| *weight > 0)
        .rev()
        .max_by_key(|(_, (weight, count, _))| weight * 4 + count.saturating_sub(1));
    let (threat_type, indicators) = match best {
        Some((threat, (_, _, words))) => (*threat, words),
        None => (FALLBACK, Vec::new()),
    };
    let (severity, severity_reason) = severity(threat_type, &lower, large);
    Verdict {
        threat_type,
        severity,
        indicators,
        severity_reason,
    }
}

/// The severity and the reason for it.
fn severity(threat_type: &str, lower: &str, large: bool) -> (&'static str, String) {
    if let Some(stated) = stated_severity(lower) {
        return (stated, "the alert states it".into());
    }
    if let Some(word) = CRITICAL_SEVERITY.iter().find_map(|i| find(lower, i)) {
        return (
            "critical",
            format!("'{word}' means destruction is under way"),
        );
    }
    if threat_type == "ransomware" {
        return ("critical", "ransomware destroys data".into());
    }
    if matches!(threat_type, "benign" | "false_positive") {
        return ("informational", "no threat is indicated".into());
    }
    if !large {
        return match threat_type {
            "credential_access" | "lateral_movement" | "impact" => (
                "high",
                format!("{} is acted on quickly", threat_type.replace('_', " ")),
            ),
            _ => ("medium", "nothing marks it as urgent".into()),
        };
    }
    if let Some(word) = HIGH_SEVERITY.iter().find_map(|i| find(lower, i)) {
        return ("high", format!("'{word}' is a known high-risk indicator"));
    }
    match threat_type {
        "discovery" => ("low", "reconnaissance alone does no harm yet".into()),
        "credential_access"
        | "lateral_movement"
        | "privilege_escalation"
        | "exfiltration"
        | "impact"
        | "phishing" => (
            "high",
            format!("{} is acted on quickly", threat_type.replace('_', " ")),
        ),
        _ if find(lower, "suspicious").is_some() => {
            ("high", "the detection itself calls it suspicious".into())
        }
        _ => ("medium", "nothing marks it as urgent".into()),
    }
}

/// A severity the text states outright: "Severity: high", "level=critical",
/// "high severity".
fn stated_severity(lower: &str) -> Option<&'static str> {
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let severity_at = |i: usize| {
        words
            .get(i)
            .and_then(|w| SEVERITIES.iter().find(|s| *s == w).copied())
    };
    words.iter().enumerate().find_map(|(i, w)| {
        match *w {
            "severity" | "level" | "priority" => severity_at(i + 1),
            _ => None,
        }
        .or_else(|| match *w {
            "severity" => i.checked_sub(1).and_then(severity_at),
            _ => None,
        })
    })
}

/// Where `indicator` occurs in `text` as a word (or a word's start, for a
/// `*` stem), returning the whole matched word.
fn find<'t>(text: &'t str, indicator: &str) -> Option<&'t str> {
    let (needle, stem) = match indicator.strip_suffix('*') {
        Some(needle) => (needle, true),
        None => (indicator, false),
    };
    let bytes = text.as_bytes();
    let is_word = |i: Option<usize>| {
        i.and_then(|i| bytes.get(i))
            .is_some_and(u8::is_ascii_alphanumeric)
    };
    let mut from = 0;
    while let Some(at) = text.get(from..).and_then(|rest| rest.find(needle)) {
        let start = from + at;
        let end = start + needle.len();
        if !is_word(start.checked_sub(1)) && (stem || !is_word(Some(end))) {
            let tail = text.get(end..).unwrap_or("");
            let word_end = end
                + tail
                    .find(|c: char| !c.is_alphanumeric())
                    .unwrap_or(tail.len());
            return text.get(start..if stem { word_end } else { end });
        }
        // Indicators are ASCII, so the byte after a match start is a char
        // boundary.
        from = start + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Rule;

    #[test]
    fn indicators_decide_the_threat_type_and_are_named() {
        let v = classify(
            "Endpoint alert: LSASS memory dumped by rundll32.exe via comsvcs.dll MiniDump",
            true,
        );
        assert_eq!(v.threat_type, "credential_access");
        assert!(v.indicators.contains(&"lsass".to_string()));
        assert!(v.indicators.contains(&"dumped".to_string()), "{v:?}");
        let answer = v.answer();
        assert!(answer.starts_with("Threat type: credential_access\nSeverity: high\nRationale: "));
        assert!(answer.contains("'lsass'"), "{answer}");
        assert_eq!(answer.lines().count(), 3);
    }

    #[test]
    fn the_taxonomy_examples_classify_as_expected() {
        for (text, threat, large) in [
            ("vssadmin delete shadows /all /quiet", "ransomware", false),
            (
                "mimikatz sekurlsa::logonpasswords",
                "credential_access",
                false,
            ),
            ("psexec to DC01 with admin creds", "lateral_movement", false),
            ("whoami /all on DC01", "discovery", false),
            ("UAC bypass via fodhelper", "privilege_escalation", false),
            (
                "Set-MpPreference to disable Defender",
                "defense_evasion",
                false,
            ),
            (
                "Cobalt Strike beacon to 203.0.113.7",
                "command_and_control",
                false,
            ),
            ("rclone copy to mega.nz", "exfiltration", false),
            (
                "Macro-enabled attachment opened in Outlook",
                "phishing",
                false,
            ),
            ("powershell -enc blob", "execution", false),
            ("disk wiper dropped", "impact", false),
            ("this is a known good backup job", "false_positive", true),
            ("nothing to see", "suspicious_activity", true),
        ] {
            assert_eq!(classify(text, large).threat_type, threat, "{text}");
            assert_eq!(classify(text, true).threat_type, threat, "{text} (large)");
        }
    }

    #[test]
    fn small_models_know_fewer_indicators() {
        assert_eq!(
            classify("procdump of a process", false).threat_type,
            "suspicious_activity"
        );
        assert_eq!(
            classify("procdump of a process", true).threat_type,
            "credential_access"
        );
        // Autostart mechanisms: persistence to the small models, privilege
        // escalation (which ATT&CK also files them under) to the large ones.
        assert_eq!(
            classify("New service installed", false).threat_type,
            "persistence"
        );
        assert_eq!(
            classify("Service installed from a temp folder", true).threat_type,
            "privilege_escalation"
        );
    }

    #[test]
    fn severity_follows_stated_levels_and_keywords() {
        assert_eq!(
            classify("vssadmin delete shadows", false).severity,
            "critical"
        );
        assert_eq!(classify("Severity: low. lsass dump", true).severity, "low");
        assert_eq!(
            classify("level=critical whoami", false).severity,
            "critical"
        );
        assert_eq!(
            classify("a HIGH severity hit: net group", true).severity,
            "high"
        );
        assert_eq!(
            classify("net group \"domain admins\"", true).severity,
            "low"
        );
        assert_eq!(classify("nothing to see", true).severity, "medium");
        assert_eq!(classify("nothing to see", false).severity, "medium");
    }

    #[test]
    fn indicators_match_whole_words_or_stems() {
        assert_eq!(find("dump the sam hive", "sam"), Some("sam"));
        assert_eq!(find("the same sample", "sam"), None);
        assert_eq!(
            find("heavily obfuscated script", "obfuscat*"),
            Some("obfuscated")
        );
        assert_eq!(find("deobfuscate", "obfuscat*"), None);
        assert_eq!(
            find("copy to \\\\host\\admin$ share", "admin$"),
            Some("admin$")
        );
        assert_eq!(find("ünïcödé lsass.exe", "lsass*"), Some("lsass"));
        assert_eq!(find("", "lsass"), None);
    }

    #[test]
    fn every_rule_names_a_known_threat_type_once_per_indicator() {
        let taxonomy = [
            "benign",
            "false_positive",
            "malware",
            "ransomware",
            "phishing",
            "credential_access",
            "lateral_movement",
            "privilege_escalation",
            "persistence",
            "defense_evasion",
            "command_and_control",
            "exfiltration",
            "discovery",
            "execution",
            "impact",
            "suspicious_activity",
        ];
        assert_eq!(PRIORITY.len(), taxonomy.len());
        for threat in PRIORITY {
            assert!(taxonomy.contains(threat), "{threat}");
        }
        let mut seen = std::collections::HashSet::new();
        for Rule {
            threat,
            indicators,
            weight,
            ..
        } in RULES
        {
            assert!(PRIORITY.contains(threat), "{threat}");
            assert!((1..=3).contains(weight));
            for indicator in *indicators {
                assert_eq!(indicator.to_lowercase(), *indicator);
                assert!(indicator.is_ascii(), "{indicator}");
                assert!(
                    seen.insert((threat, indicator)),
                    "{threat}: {indicator} twice"
                );
            }
        }
    }

    /// Measures both models on the labelled Sigma alerts when the data set
    /// is beside the project (it is not shipped with it, and never read at
    /// run time).
    #[test]
    fn accuracy_on_the_labelled_alerts() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/sigma-windows-alerts.jsonl");
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!("skipped: {} not found", path.display());
            return;
        };
        let alerts: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert!(!alerts.is_empty());
        let accuracy = |large: bool, field: &str| {
            let right = alerts
                .iter()
                .filter(|a| {
                    let v = classify(a["alert"].as_str().unwrap_or(""), large);
                    let said = if field == "threat_type" {
                        v.threat_type
                    } else {
                        v.severity
                    };
                    a[field] == said
                })
                .count();
            right as f64 / alerts.len() as f64
        };
        let (small, large) = (
            accuracy(false, "threat_type"),
            accuracy(true, "threat_type"),
        );
        let (small_sev, large_sev) = (accuracy(false, "severity"), accuracy(true, "severity"));
        eprintln!(
            "on {} alerts: threat type small {small:.3}, large {large:.3}; \
             severity small {small_sev:.3}, large {large_sev:.3}",
            alerts.len()
        );
        assert!(
            large > small + 0.1,
            "the large model should know clearly more"
        );
        assert!((0.5..=0.7).contains(&large), "large accuracy {large}");
    }
}
