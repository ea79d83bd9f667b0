//! Chat apps' housekeeping requests — the title, tags and follow-up
//! suggestions Open WebUI asks the same model for after each answer, the
//! title LibreChat asks for — recognised by the newest user message
//! (`capture.background_tasks.patterns`, regexes) and captured tagged
//! `origin=background_task`. The tag makes the conversation's
//! `background_task` signal, which keeps it out of the review queue and
//! out of datasets unless asked for. An app can set the same tag itself
//! with `x-flywheel-tags: origin=background_task`.

use regex::Regex;
use serde_json::Value;

/// The tag a background task's inference carries.
pub const ORIGIN_TAG: &str = "origin";
pub const BACKGROUND_TASK: &str = "background_task";

/// The default patterns: every Open WebUI task prompt starts `### Task:`
/// (title, tags, follow-ups, search queries, autocompletion); LibreChat's
/// title prompts, the classic and the agents' one.
pub const DEFAULT_PATTERNS: &[&str] = &[
    r"^\s*### Task:",
    r"(?i)a concise,? 5-word-or-less title for the conversation",
    r"(?i)a concise title in the detected language",
];

#[derive(Debug, Clone)]
pub struct BackgroundTasks {
    /// Empty when off. Each is tried on its own rather than as one set: a
    /// pattern skips ahead to the literal it needs, which one automaton of
    /// them all cannot; on the bundled alerts that reads five times faster.
    patterns: Vec<Regex>,
}

impl BackgroundTasks {
    /// The patterns compiled; the index of the first that is no regex.
    pub fn new(enabled: bool, patterns: &[String]) -> Result<Self, (usize, regex::Error)> {
        let compiled = patterns
            .iter()
            .enumerate()
            .map(|(i, pattern)| Regex::new(pattern).map_err(|e| (i, e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            patterns: if enabled { compiled } else { Vec::new() },
        })
    }

    /// For a config that validation passed (each pattern compiled there);
    /// should one not compile after all, nothing is recognised.
    pub fn from_validated(enabled: bool, patterns: &[String]) -> Self {
        Self::new(enabled, patterns).unwrap_or(Self {
            patterns: Vec::new(),
        })
    }

    /// Whether `messages` (a chat request's) are a background task: the
    /// newest user message matches a pattern.
    pub fn matches(&self, messages: &Value) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let newest = messages
            .as_array()
            .into_iter()
            .flatten()
            .rev()
            .find(|m| m["role"] == "user");
        let Some(message) = newest else {
            return false;
        };
        match &message["content"] {
            Value::String(text) => self.is_task(text),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .any(|t| self.is_task(t)),
            _ => false,
        }
    }

    fn is_task(&self, text: &str) -> bool {
        self.patterns.iter().any(|p| p.is_match(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defaults() -> BackgroundTasks {
        let patterns: Vec<String> = DEFAULT_PATTERNS.iter().map(|p| p.to_string()).collect();
        BackgroundTasks::new(true, &patterns).unwrap()
    }

    fn user(text: &str) -> Value {
        json!([{"role": "system", "content": "x"}, {"role": "user", "content": text}])
    }

    #[test]
    fn open_webui_and_librechat_prompts_are_recognised() {
        let tasks = defaults();
        for prompt in [
            "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history.\n### Chat History:\n<chat_history>\nUSER: mimikatz\n</chat_history>",
            "### Task:\nGenerate 1-3 broad tags categorizing the main themes of the chat history",
            "### Task:\nSuggest 3-5 relevant follow-up questions or prompts",
            "Please generate a concise, 5-word-or-less title for the conversation, using its same language, with no punctuation.",
            "Provide a concise, 5-word-or-less title for the conversation, using title case conventions. Only return the title itself.\n\nConversation:\nUser: hi",
        ] {
            assert!(tasks.matches(&user(prompt)), "{prompt}");
        }
        for prompt in [
            "Endpoint alert: mimikatz on WS-042",
            "Summarise this ### Task: list from the SOC wiki",
        ] {
            assert!(!tasks.matches(&user(prompt)), "{prompt}");
        }
        let parts = json!([{"role": "user", "content": [{"type": "text", "text": "### Task:\nGenerate tags"}]}]);
        assert!(tasks.matches(&parts));
        // Only the newest user message counts.
        let later = json!([{"role": "user", "content": "### Task: x"}, {"role": "assistant", "content": "y"},
                           {"role": "user", "content": "now a real question"}]);
        assert!(!tasks.matches(&later));
    }

    #[test]
    fn off_or_bad_patterns() {
        let patterns = vec!["### Task:".to_string()];
        assert!(
            !BackgroundTasks::new(false, &patterns)
                .unwrap()
                .matches(&user("### Task: x"))
        );
        let bad = vec!["ok".to_string(), "([".to_string()];
        assert_eq!(BackgroundTasks::new(true, &bad).unwrap_err().0, 1);
    }
}
