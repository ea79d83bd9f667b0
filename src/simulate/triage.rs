//! The simulator's "models": keyword rules over the alert text that yield a
//! threat type, a severity and a rationale naming the matched indicators.
//! Deterministic: the same prompt always gets the same verdict. The small
//! models know only the common indicators; the large ones know them all.

/// (threat type, indicators, known to small models). Checked in order: the
/// tactic an analyst acts on first wins.
const RULES: &[(&str, &[&str], bool)] = &[
    (
        "ransomware",
        &[
            "ransom",
            "vssadmin delete",
            "delete shadows",
            "shadowcopy delete",
        ],
        true,
    ),
    ("ransomware", &["encrypt", "wbadmin delete"], false),
    (
        "impact",
        &[
            "wipe",
            "recoveryenabled",
            "bcdedit",
            "inhibit system recovery",
        ],
        true,
    ),
    (
        "impact",
        &[
            "service stop",
            "shutdown /r",
            "format ",
            "cipher /w",
            "impact",
        ],
        false,
    ),
    ("phishing", &["phish", "macro", "outlook"], true),
    ("phishing", &["attachment", "winword", "spearphish"], false),
    ("exfiltration", &["exfil", "rclone"], true),
    (
        "exfiltration",
        &["upload", "mega.nz", "ftp", "transfer.sh"],
        false,
    ),
    (
        "credential_access",
        &["lsass", "mimikatz", "credential", "password"],
        true,
    ),
    (
        "credential_access",
        &[
            "ntds",
            "sam hive",
            "kerberoast",
            "dump",
            "procdump",
            "hashes",
            "keylog",
            "dpapi",
            "vault",
        ],
        false,
    ),
    (
        "lateral_movement",
        &["psexec", "lateral", "remote desktop"],
        true,
    ),
    (
        "lateral_movement",
        &[
            "rdp",
            "winrm",
            "admin$",
            "wmic /node",
            "remote service",
            "dcom",
            "smbexec",
        ],
        false,
    ),
    ("command_and_control", &["beacon", "cobalt", "c2 "], true),
    (
        "command_and_control",
        &[
            "tunnel",
            "ngrok",
            "proxy",
            "anydesk",
            "teamviewer",
            "remote access",
            "dns",
            "download",
            "curl",
            "bitsadmin",
            "certutil",
        ],
        false,
    ),
    ("privilege_escalation", &["privilege", "uac"], true),
    (
        "privilege_escalation",
        &[
            "elevat",
            "token",
            "bypass",
            "system privileges",
            "named pipe",
            "potato",
        ],
        false,
    ),
    (
        "persistence",
        &["scheduled task", "schtasks", "run key"],
        true,
    ),
    (
        "persistence",
        &[
            "currentversion\\run",
            "startup",
            "service install",
            "new service",
            "autorun",
            "wmi event",
            "registry key",
            "image file execution",
            "appinit",
            "persistence",
        ],
        false,
    ),
    ("defense_evasion", &["defender", "amsi", "disable"], true),
    (
        "defense_evasion",
        &[
            "clear",
            "wevtutil",
            "obfuscat",
            "masquerad",
            "tamper",
            "etw",
            "hidden",
            "rundll32",
            "regsvr32",
            "mshta",
            "signed",
            "evasion",
            "uninstall",
            "exclusion",
            "suspicious",
            "unusual",
        ],
        false,
    ),
    ("discovery", &["whoami", "net group"], true),
    (
        "discovery",
        &[
            "net user",
            "enumerat",
            "recon",
            "discovery",
            "systeminfo",
            "nltest",
            "query",
            "adfind",
            "ipconfig",
        ],
        false,
    ),
    ("execution", &["powershell", "cmd.exe"], true),
    (
        "execution",
        &[
            "script",
            "wscript",
            "cscript",
            "execution",
            "invoke-",
            "command line",
            "wmic",
            "msiexec",
            "python",
        ],
        false,
    ),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub threat_type: &'static str,
    pub severity: &'static str,
    /// The indicators found in the text, in rule order.
    pub indicators: Vec<&'static str>,
}

impl Verdict {
    /// The answer as the model says it.
    pub fn answer(&self) -> String {
        let rationale = if self.indicators.is_empty() {
            "No specific indicator matched; the activity is unusual enough to review by hand."
                .to_string()
        } else {
            format!(
                "The alert shows {} consistent with {}.",
                self.indicators
                    .iter()
                    .map(|i| format!("'{}'", i.trim()))
                    .collect::<Vec<_>>()
                    .join(", "),
                self.threat_type.replace('_', " ")
            )
        };
        format!(
            "Threat type: {}\nSeverity: {}\nRationale: {rationale}",
            self.threat_type, self.severity
        )
    }
}

/// Classifies `text` as a small (`large == false`) or large model would.
pub fn classify(text: &str, large: bool) -> Verdict {
    let lower = text.to_lowercase();
    let mut threat = None;
    let mut indicators = Vec::new();
    for (kind, words, small_knows) in RULES {
        if !large && !small_knows {
            continue;
        }
        if threat.is_some_and(|t| t != *kind) {
            continue;
        }
        let found: Vec<&'static str> = words
            .iter()
            .copied()
            .filter(|w| lower.contains(*w))
            .collect();
        if !found.is_empty() {
            threat = Some(*kind);
            indicators.extend(found);
        }
    }
    let threat_type = threat.unwrap_or("suspicious_activity");
    Verdict {
        threat_type,
        severity: severity(threat_type, &lower, large),
        indicators,
    }
}

fn severity(threat_type: &str, lower: &str, large: bool) -> &'static str {
    if lower.contains("critical")
        || threat_type == "ransomware"
        || (large && lower.contains("mimikatz"))
    {
        return "critical";
    }
    if !large {
        return if threat_type == "suspicious_activity" {
            "medium"
        } else {
            "high"
        };
    }
    match threat_type {
        "credential_access"
        | "lateral_movement"
        | "impact"
        | "command_and_control"
        | "privilege_escalation"
        | "exfiltration"
        | "phishing" => "high",
        "discovery" if !lower.contains("high") => "low",
        "persistence" | "execution" | "defense_evasion" | "discovery"
            if lower.contains("suspicious") || lower.contains("malicious") =>
        {
            "high"
        }
        _ => "medium",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indicators_decide_the_threat_type_and_are_named() {
        let v = classify(
            "Endpoint alert: LSASS memory dumped by rundll32.exe comsvcs.dll",
            true,
        );
        assert_eq!(v.threat_type, "credential_access");
        assert!(v.indicators.contains(&"lsass") && v.indicators.contains(&"dump"));
        assert!(
            v.answer()
                .starts_with("Threat type: credential_access\nSeverity: high\nRationale: ")
        );
        assert_eq!(
            classify("vssadmin delete shadows /all", false).severity,
            "critical"
        );
        assert_eq!(
            classify("nothing to see", true).threat_type,
            "suspicious_activity"
        );
    }

    #[test]
    fn small_models_know_fewer_indicators() {
        assert_eq!(
            classify("rclone copy to mega.nz", true).threat_type,
            "exfiltration"
        );
        assert_eq!(
            classify("procdump of a process", false).threat_type,
            "suspicious_activity"
        );
        assert_eq!(
            classify("procdump of a process", true).threat_type,
            "credential_access"
        );
    }

    /// Measures both models on the labelled alerts when the data set is
    /// beside the project (it is not shipped with it).
    #[test]
    fn accuracy_on_the_labelled_alerts() {
        let Ok(text) = std::fs::read_to_string("../shared/data/sigma-windows-alerts.jsonl") else {
            return;
        };
        let alerts: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let accuracy = |large: bool| {
            let right = alerts
                .iter()
                .filter(|a| {
                    classify(a["alert"].as_str().unwrap_or(""), large).threat_type
                        == a["threat_type"]
                })
                .count();
            right as f64 / alerts.len() as f64
        };
        let (small, large) = (accuracy(false), accuracy(true));
        eprintln!(
            "threat-type accuracy: small {small:.3}, large {large:.3} on {} alerts",
            alerts.len()
        );
        assert!(large > small, "the large model should know more");
    }
}
