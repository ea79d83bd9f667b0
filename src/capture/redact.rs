//! Redaction before anything is stored: credentials are replaced by
//! `[REDACTED:kind]`; indicators of compromise (IPs, hashes, domains, file
//! paths) are kept, because analysts need them.

use regex::{Regex, RegexSet};
use serde_json::Value;

/// The built-in credential patterns, selected by `"credentials"` in
/// `capture.redact`. Each is anchored on a shape a secret has and an
/// indicator does not (a hex hash or an IP never matches).
const CREDENTIALS: &[(&str, &str)] = &[
    (
        "private_key",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    ),
    ("aws_access_key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    (
        "aws_secret_key",
        r"(?i)\baws_secret_access_key\s*[:=]\s*[A-Za-z0-9/+=]{20,}",
    ),
    ("api_key", r"\bsk-[A-Za-z0-9_\-]{20,}"),
    ("github_token", r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    ("slack_token", r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    ("google_api_key", r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    (
        "jwt",
        r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    ),
    ("bearer_token", r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{16,}=*"),
    ("azure_account_key", r"(?i)\bAccountKey=[A-Za-z0-9+/=]{20,}"),
    (
        "connection_string_password",
        r"(?i)\b[a-z][a-z0-9+.\-]*://[^\s:/@]+:[^\s@/]+@",
    ),
    (
        "password",
        r#"(?i)\b(?:password|passwd|pwd)\s*[=:]\s*[^\s;'",]+"#,
    ),
];

/// From this length on a text is read by each rule rather than by the
/// set (see [`Redactor::redact`]); measured with the bundled alerts.
const LONG_TEXT: usize = 256;

pub struct Redactor {
    rules: Vec<(String, Regex)>,
    /// All rules in one automaton: most texts hold no secret, and one pass
    /// over them costs a twelfth of trying each rule.
    any: RegexSet,
}

impl Redactor {
    /// `entries` is `capture.redact`: `"credentials"` for the built-in
    /// patterns, anything else a regex of its own (kind `custom_N`).
    pub fn new(entries: &[String]) -> Result<Self, (usize, String)> {
        let mut rules = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            if entry == "credentials" {
                for (kind, pattern) in CREDENTIALS {
                    let re = Regex::new(pattern).map_err(|e| (i, e.to_string()))?;
                    rules.push(((*kind).to_string(), re));
                }
            } else {
                let re = Regex::new(entry).map_err(|e| (i, e.to_string()))?;
                rules.push((format!("custom_{i}"), re));
            }
        }
        let any = RegexSet::new(rules.iter().map(|(_, re)| re.as_str()))
            .map_err(|e| (0, e.to_string()))?;
        Ok(Self { rules, any })
    }

    /// Redacts every string inside `value`, counting what it replaced.
    pub fn redact_value(&self, value: &mut Value) {
        match value {
            Value::String(s) => {
                if let Some(clean) = self.redact(s) {
                    *s = clean;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_value(v)),
            Value::Object(map) => map.values_mut().for_each(|v| self.redact_value(v)),
            _ => {}
        }
    }

    /// The text with every match replaced, or `None` when nothing matched.
    pub fn redact(&self, text: &str) -> Option<String> {
        // A short text is read by the set, which costs less than starting
        // every rule on it; most hold no secret, and the set says whether
        // any rule matches faster than which ones do, so which is asked
        // only after. A long text is read by each rule on its own: a rule
        // skips ahead to the literal it needs (`AKIA`, `sk-`, …), which
        // the set's one automaton cannot, and all of them together read
        // faster than the set.
        let matched = if text.len() < LONG_TEXT {
            if !self.any.is_match(text) {
                return None;
            }
            Some(self.any.matches(text))
        } else {
            None
        };
        let mut out: Option<String> = None;
        for (i, (kind, re)) in self.rules.iter().enumerate() {
            // A rule applies where it matches the text as given, whichever
            // way that is found: a marker put in by another rule is not
            // redacted again.
            let applies = match &matched {
                Some(m) => m.matched(i),
                None => re.is_match(text),
            };
            if !applies {
                continue;
            }
            let current = out.as_deref().unwrap_or(text);
            let hits = re.find_iter(current).count();
            if hits > 0 {
                let replaced = re
                    .replace_all(current, format!("[REDACTED:{kind}]").as_str())
                    .into_owned();
                metrics::counter!("flywheel_redactions_total", "kind" => kind.clone())
                    .increment(hits as u64);
                out = Some(replaced);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor() -> Redactor {
        Redactor::new(&["credentials".into(), r"CASE-\d{6}".into()]).unwrap()
    }

    #[test]
    fn credentials_are_replaced() {
        let r = redactor();
        let cases = [
            ("key AKIAIOSFODNN7EXAMPLE used", "aws_access_key"),
            (
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "aws_secret_key",
            ),
            (
                "Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345",
                "bearer_token",
            ),
            (
                "export OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwx",
                "api_key",
            ),
            (
                "token ghp_abcdefghijklmnopqrstuvwxyz0123456789",
                "github_token",
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
                "private_key",
            ),
            (
                "postgres://svc_backup:Hunter2!@db01.corp.local:5432/prod",
                "connection_string_password",
            ),
            (
                "net use \\\\fs01 /user:admin password=Summer2024!",
                "password",
            ),
            (
                "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
                "jwt",
            ),
            ("ticket CASE-123456 opened", "custom_1"),
        ];
        for (text, kind) in cases {
            let out = r
                .redact(text)
                .unwrap_or_else(|| panic!("nothing redacted in {text}"));
            assert!(
                out.contains(&format!("[REDACTED:{kind}]")),
                "{text} -> {out}"
            );
        }
        let out = r
            .redact("postgres://svc_backup:Hunter2!@db01.corp.local:5432/prod")
            .unwrap();
        assert!(
            !out.contains("Hunter2") && out.contains("5432/prod"),
            "{out}"
        );
    }

    #[test]
    fn indicators_of_compromise_are_kept() {
        let r = redactor();
        for text in [
            "Beacon to 185.220.101.47:443 and 2001:db8::1",
            "SHA256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "MD5 d41d8cd98f00b204e9800998ecf8427e, SHA1 da39a3ee5e6b4b0d3255bfef95601890afd80709",
            "C2 domain update-check.evil-cdn.com via https://update-check.evil-cdn.com/a.php",
            r"Dropped C:\Users\Public\svchost.exe and /tmp/.x/kworker",
            "User CORP\\jdoe logged on with a password spray pattern",
        ] {
            assert_eq!(r.redact(text), None, "{text}");
        }
    }

    #[test]
    fn a_long_text_is_redacted_as_a_short_one() {
        let r = redactor();
        let filler = "Process tree: explorer.exe > cmd.exe > powershell.exe. ".repeat(5);
        for text in [
            "key AKIAIOSFODNN7EXAMPLE used",
            "Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345 and password=Summer2024!",
            "postgres://svc_backup:Hunter2!@db01.corp.local:5432/prod",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
            "ticket CASE-123456 opened",
            "Beacon to 185.220.101.47:443",
        ] {
            let long = format!("{filler}{text} {filler}");
            assert!(long.len() >= LONG_TEXT && text.len() < LONG_TEXT);
            let expected = r.redact(text).map(|out| format!("{filler}{out} {filler}"));
            assert_eq!(r.redact(&long), expected, "{text}");
        }
        // A rule matching another's marker leaves it alone either way.
        let marker = Redactor::new(&["credentials".into(), "REDACTED".into()]).unwrap();
        let text = "key AKIAIOSFODNN7EXAMPLE used";
        let short = marker.redact(text);
        assert_eq!(short.as_deref(), Some("key [REDACTED:aws_access_key] used"));
        assert_eq!(
            marker.redact(&format!("{filler}{text} {filler}")),
            short.map(|out| format!("{filler}{out} {filler}"))
        );
    }

    #[test]
    fn nested_json_strings_are_redacted() {
        let r = redactor();
        let mut v = serde_json::json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "use AKIAIOSFODNN7EXAMPLE"}]}]});
        r.redact_value(&mut v);
        assert_eq!(
            v["messages"][0]["content"][0]["text"],
            "use [REDACTED:aws_access_key]"
        );
    }

    #[test]
    fn bad_custom_patterns_name_their_position() {
        let Err((index, _)) = Redactor::new(&["credentials".into(), "([".into()]) else {
            panic!("accepted a bad regex");
        };
        assert_eq!(index, 1);
    }
}
