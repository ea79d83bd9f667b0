//! The checks one example must pass: the seed's message rules
//! (`fine_tuning.min_message_chars`/`max_message_chars`, system message
//! first, an assistant message) and the provider's tokens per example for
//! the base model, counted with the model's own tokenizer.

use super::example::Message;
use crate::config::FineTuningConfig;

/// The BPE vocabulary a base model reads text with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokenizer {
    /// gpt-4o, gpt-4.1, gpt-5 and the o-series.
    O200kBase,
    /// gpt-4, gpt-3.5-turbo and anything not known to be newer.
    Cl100kBase,
}

impl Tokenizer {
    pub fn for_model(model: &str) -> Self {
        let model = base_name(model);
        let o_series = model
            .strip_prefix('o')
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
        if o_series
            || ["gpt-4o", "gpt-4.1", "gpt-5"]
                .iter()
                .any(|p| model.starts_with(p))
        {
            Self::O200kBase
        } else {
            Self::Cl100kBase
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::O200kBase => "o200k_base",
            Self::Cl100kBase => "cl100k_base",
        }
    }

    pub fn count(self, text: &str) -> usize {
        let bpe = match self {
            Self::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Self::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        };
        // Ordinary encoding: text that looks like a special token is
        // training data, not a control sequence.
        bpe.count_ordinary(text)
    }
}

/// `ft:gpt-4o-mini-2024-07-18:org:suffix:id` was trained from `gpt-4o-mini-…`.
fn base_name(model: &str) -> &str {
    match model.strip_prefix("ft:") {
        Some(rest) => rest.split(':').next().unwrap_or(rest),
        None => model,
    }
}

/// Tokens one example may have for `model`: the entry of
/// `fine_tuning.token_limits` with the longest name that starts it (so a
/// dated snapshot finds its family), else `default_token_limit`.
pub fn token_limit(config: &FineTuningConfig, model: &str) -> usize {
    let model = base_name(model);
    config
        .token_limits
        .iter()
        .filter(|(name, _)| model.starts_with(name.as_str()))
        .max_by_key(|(name, _)| name.len())
        .map_or(config.default_token_limit, |(_, tokens)| *tokens)
}

/// Tokens of a chat as the model reads it: each message framed by three
/// tokens around its role and content, and three more priming the reply
/// (OpenAI's published way of counting chat tokens).
pub fn count_tokens(messages: &[Message], tokenizer: Tokenizer) -> usize {
    const PER_MESSAGE: usize = 3;
    const REPLY_PRIMING: usize = 3;
    messages
        .iter()
        .map(|m| PER_MESSAGE + tokenizer.count(&m.role) + tokenizer.count(&m.content))
        .sum::<usize>()
        + REPLY_PRIMING
}

/// What [`check_messages`] holds an example to.
#[derive(Debug, Clone)]
pub struct Limits {
    pub min_message_chars: usize,
    pub max_message_chars: usize,
    /// The base model the dataset is for; it picks the tokenizer.
    pub base_model: String,
    pub max_tokens: usize,
}

impl Limits {
    pub fn from_config(config: &FineTuningConfig, base_model: &str) -> Self {
        Self {
            min_message_chars: config.min_message_chars,
            max_message_chars: config.max_message_chars,
            base_model: base_model.to_string(),
            max_tokens: token_limit(config, base_model),
        }
    }
}

/// Checks one chat an example trains on; the error says what is wrong in
/// words an analyst can act on.
pub fn check_messages(messages: &[Message], limits: &Limits) -> Result<(), String> {
    if messages.len() < 2 {
        return Err(format!(
            "has {} message(s); an example needs at least 2",
            messages.len()
        ));
    }
    if let Some(first) = messages.first().filter(|m| m.role != "system") {
        return Err(format!(
            "its first message is a {} message; the system message must come first",
            first.role
        ));
    }
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err("has no assistant message to learn from".into());
    }
    for (i, m) in messages.iter().enumerate() {
        check_length(i + 1, m, limits)?;
    }
    check_tokens(messages, limits)
}

fn check_length(position: usize, m: &Message, limits: &Limits) -> Result<(), String> {
    let chars = m.content.chars().count();
    let which = format!("message {position} ({}: {})", m.role, preview(&m.content));
    if chars < limits.min_message_chars {
        return Err(format!(
            "{which} has {chars} characters; at least {} are needed (fine_tuning.min_message_chars)",
            limits.min_message_chars
        ));
    }
    if chars > limits.max_message_chars {
        return Err(format!(
            "{which} has {chars} characters; at most {} are allowed (fine_tuning.max_message_chars)",
            limits.max_message_chars
        ));
    }
    Ok(())
}

/// The start of a message, quoted, so a reader finds the one meant: the
/// numbering counts the system prompt an example may have been given.
fn preview(content: &str) -> String {
    const SHOWN: usize = 24;
    let start: String = content.chars().take(SHOWN).collect();
    let more = if content.chars().count() > SHOWN {
        "…"
    } else {
        ""
    };
    format!("{start:?}{more}")
}

fn check_tokens(messages: &[Message], limits: &Limits) -> Result<(), String> {
    let tokenizer = Tokenizer::for_model(&limits.base_model);
    let tokens = count_tokens(messages, tokenizer);
    if tokens > limits.max_tokens {
        return Err(format!(
            "has {tokens} tokens ({}); {} takes at most {} per example (fine_tuning.token_limits)",
            tokenizer.name(),
            limits.base_model,
            limits.max_tokens
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::from_config(&FineTuningConfig::default(), "gpt-4o-mini-2024-07-18")
    }

    fn chat() -> Vec<Message> {
        vec![
            Message::new("system", "You are a security analyst."),
            Message::new("user", "Alert: powershell -enc from winword.exe"),
            Message::new("assistant", "Threat type: execution\nSeverity: high"),
        ]
    }

    #[test]
    fn a_good_chat_passes() {
        assert_eq!(check_messages(&chat(), &limits()), Ok(()));
    }

    #[test]
    fn each_rule_rejects_with_its_reason() {
        let l = limits();
        let e = check_messages(&chat()[..1], &l).unwrap_err();
        assert_eq!(e, "has 1 message(s); an example needs at least 2");

        let e = check_messages(&chat()[1..], &l).unwrap_err();
        assert_eq!(
            e,
            "its first message is a user message; the system message must come first"
        );

        let e = check_messages(&chat()[..2], &l).unwrap_err();
        assert_eq!(e, "has no assistant message to learn from");

        let mut short = chat();
        short[1].content = "hi".into();
        let e = check_messages(&short, &l).unwrap_err();
        assert_eq!(
            e,
            "message 2 (user: \"hi\") has 2 characters; at least 10 are needed (fine_tuning.min_message_chars)"
        );

        let mut long = chat();
        long[2].content = format!("Threat type: \"x\"{}", "é".repeat(3985));
        let e = check_messages(&long, &l).unwrap_err();
        assert_eq!(
            e,
            r#"message 3 (assistant: "Threat type: \"x\"éééééééé"…) has 4001 characters; at most 4000 are allowed (fine_tuning.max_message_chars)"#
        );
    }

    #[test]
    fn tokens_are_counted_with_the_base_models_tokenizer_against_its_limit() {
        let mut l = limits();
        let tokens = count_tokens(&chat(), Tokenizer::O200kBase);
        // Three messages of a few words each, plus the framing.
        assert!((20..60).contains(&tokens), "{tokens}");
        l.max_tokens = tokens - 1;
        let e = check_messages(&chat(), &l).unwrap_err();
        assert_eq!(
            e,
            format!(
                "has {tokens} tokens (o200k_base); gpt-4o-mini-2024-07-18 takes at most {} per example (fine_tuning.token_limits)",
                tokens - 1
            )
        );
        l.max_tokens = tokens;
        assert_eq!(check_messages(&chat(), &l), Ok(()));
    }

    #[test]
    fn a_chat_counts_its_framing_around_the_text() {
        assert_eq!(Tokenizer::O200kBase.count("hello world"), 2);
        assert_eq!(Tokenizer::Cl100kBase.count("hello world"), 2);
        // 3 framing + 1 for "user" + 2 for the text, then 3 priming the reply.
        let chat = [Message::new("user", "hello world")];
        assert_eq!(count_tokens(&chat, Tokenizer::O200kBase), 9);
    }

    #[test]
    fn the_two_vocabularies_count_differently() {
        // o200k_base has far more tokens for scripts other than Latin.
        let text = [Message::new(
            "user",
            "Подозрительный процесс читает память lsass",
        )];
        assert_ne!(
            count_tokens(&text, Tokenizer::O200kBase),
            count_tokens(&text, Tokenizer::Cl100kBase)
        );
    }

    #[test]
    fn models_find_their_tokenizer_and_limit() {
        for m in [
            "gpt-4o-mini",
            "gpt-4o-2024-08-06",
            "o3-mini",
            "gpt-4.1-nano",
            "ft:gpt-4o-mini:org:sfx:abc",
        ] {
            assert_eq!(Tokenizer::for_model(m), Tokenizer::O200kBase, "{m}");
        }
        for m in ["gpt-3.5-turbo-0125", "gpt-4", "ollama-llama3", "omni"] {
            assert_eq!(Tokenizer::for_model(m), Tokenizer::Cl100kBase, "{m}");
        }
        let c = FineTuningConfig::default();
        assert_eq!(token_limit(&c, "gpt-4o-mini-2024-07-18"), 65_536);
        assert_eq!(token_limit(&c, "gpt-3.5-turbo-0125"), 16_385);
        assert_eq!(token_limit(&c, "ft:gpt-3.5-turbo-0125:o:s:x"), 16_385);
        assert_eq!(token_limit(&c, "llama3"), c.default_token_limit);
    }
}
