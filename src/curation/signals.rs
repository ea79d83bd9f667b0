//! Quality signals per conversation, for list filters and the dataset
//! report: did the model finish its answer, how long is it, is it a
//! near-verbatim duplicate of another, is it labelled, rated, corrected,
//! did the upstream fail.

use super::example::{
    Candidate, Continues, Message, TextMessage, continues_stored, correction, finish_reason,
    lenient_text, turn_text,
};
use crate::store::{ConversationSignals, InferenceRecord};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QualitySignals {
    pub conversation_id: String,
    /// The last turn ended with status `ok` and finish_reason `stop`.
    pub complete_answer: bool,
    /// Characters of the last turn's answer as the model gave it.
    pub answer_chars: usize,
    /// [`normalised_hash`] of the last turn's messages and its answer (the
    /// correction, when there is one), after every earlier turn's when
    /// the last one sent only what was new (a Responses chain).
    pub text_hash: String,
    /// The conversation (smallest id among those given) this one repeats.
    pub duplicate_of: Option<String>,
    pub has_labels: bool,
    pub has_rating: bool,
    pub has_correction: bool,
    /// Some turn failed upstream.
    pub upstream_error: bool,
}

/// The signals of each candidate, in order; duplicates are found among
/// the candidates given.
pub fn quality_signals(candidates: &[Candidate]) -> Vec<QualitySignals> {
    let mut signals: Vec<QualitySignals> = candidates.iter().map(signals_of).collect();
    let mut first: HashMap<String, String> = HashMap::new();
    for s in &signals {
        let id = first
            .entry(s.text_hash.clone())
            .or_insert_with(|| s.conversation_id.clone());
        if s.conversation_id < *id {
            id.clone_from(&s.conversation_id);
        }
    }
    for s in &mut signals {
        s.duplicate_of = first
            .get(&s.text_hash)
            .filter(|id| **id != s.conversation_id)
            .cloned();
    }
    signals
}

fn signals_of(c: &Candidate) -> QualitySignals {
    let review = &c.conversation.review;
    let last = c.turns.last().map(|(turn, _)| turn);
    let answer_chars = last
        .and_then(|t| t.response["choices"][0]["message"]["content"].as_str())
        .map_or(0, |a| a.chars().count());
    QualitySignals {
        conversation_id: c.conversation.id.clone(),
        complete_answer: last.is_some_and(|t| t.status == "ok" && finish_reason(t) == Some("stop")),
        answer_chars,
        text_hash: hash_of(&conversation_text(c)),
        duplicate_of: None,
        has_labels: review.threat_type.is_some() || review.severity.is_some(),
        has_rating: review.rating_count > 0
            || c.turns
                .iter()
                .flat_map(|(_, f)| f)
                .any(|f| f.rating.is_some()),
        has_correction: correction(c).is_some(),
        upstream_error: c.turns.iter().any(|(t, _)| t.status == "upstream_error"),
    }
}

/// What one turn says of its conversation, as the store keeps it when the
/// turn is appended: the same completeness, length and text hash as
/// [`quality_signals`] gives before any correction (the store finds the
/// duplicate).
pub fn turn_signals(turn: &InferenceRecord) -> ConversationSignals {
    let answer_chars = turn.response["choices"][0]["message"]["content"]
        .as_str()
        .map_or(0, |a| a.chars().count());
    ConversationSignals {
        complete_answer: turn.status == "ok" && finish_reason(turn) == Some("stop"),
        background_task: turn
            .tags
            .get(crate::capture::background::ORIGIN_TAG)
            .map(String::as_str)
            == Some(crate::capture::background::BACKGROUND_TASK),
        answer_chars: u32::try_from(answer_chars).unwrap_or(u32::MAX),
        upstream_error: turn.status == "upstream_error",
        // A turn that sent only what is new holds too little of its
        // conversation for copies to be told by it.
        text_hash: (continues_stored(turn) == Continues::Nothing)
            .then(|| hash_of(&turn_text(turn, None))),
        duplicate_of: None,
    }
}

/// What a conversation's copies are told by: its last turn's messages and
/// answer; when that turn sent only what is new (a Responses chain), every
/// turn's, which hold its whole history.
fn conversation_text(c: &Candidate) -> Vec<TextMessage<'_>> {
    match c.turns.last() {
        Some((last, _)) if continues_stored(last) != Continues::Nothing => {
            let (earlier, _) = c.turns.split_at(c.turns.len() - 1);
            let mut text: Vec<TextMessage<'_>> = earlier
                .iter()
                .flat_map(|(turn, _)| turn_text(turn, None))
                .collect();
            text.extend(lenient_text(c));
            text
        }
        _ => lenient_text(c),
    }
}

/// SHA-256 (hex) of the messages' roles and texts, lower-cased with
/// whitespace runs collapsed, so copies differing only in case or spacing
/// hash alike.
pub fn normalised_hash(messages: &[Message]) -> String {
    text_hash(
        messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str())),
    )
}

/// [`normalised_hash`] of messages given as role and text.
fn text_hash<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut hasher = Sha256::new();
    let mut normal = String::new();
    for (role, text) in messages {
        normalise(text, &mut normal);
        // Length-prefixed, so no text can pass for a boundary between
        // role and content or between messages.
        for part in [role.as_bytes(), normal.as_bytes()] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
    }
    // Written at once: `hex::encode` builds its string a character at a time.
    format!("{:x}", hasher.finalize())
}

/// [`text_hash`] of messages whose texts may be owned.
fn hash_of(messages: &[TextMessage<'_>]) -> String {
    text_hash(messages.iter().map(|(role, text)| (*role, text.as_ref())))
}

/// `text` lower-cased with whitespace runs made one space and trimmed,
/// into `out`. Capture hashes every turn: one buffer, not a string a word;
/// ASCII text read byte by byte rather than by decoding characters, which
/// was most of the cost of hashing a turn.
fn normalise(text: &str, out: &mut String) {
    out.clear();
    if text.is_ascii() {
        crate::store::join_ascii_words(
            text.as_bytes(),
            usize::MAX,
            |b| b.to_ascii_lowercase(),
            out,
        );
        return;
    }
    for word in text.to_lowercase().split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curation::tests::{candidate, feedback, with_answer};

    #[test]
    fn plain_ascii_is_normalised_as_any_other_text() {
        for text in [
            "  Alert:\tEVIL.exe \x0b\x0c ran\r\n",
            "",
            " \n ",
            "ONE",
            "a  b",
            "x",
            " leading and trailing\t",
            "\x1c not\x1fspace\u{7f}",
            "\u{c9}T\u{c9}  \u{3a3}A\u{3a3}",
        ] {
            let mut out = String::new();
            normalise(text, &mut out);
            let words: Vec<_> = text
                .to_lowercase()
                .split_whitespace()
                .map(String::from)
                .collect();
            assert_eq!(out.as_bytes(), words.join(" ").as_bytes(), "{text:?}");
        }
    }

    #[test]
    fn the_text_hash_is_the_one_stores_already_hold() {
        // Stored conversations' hashes are compared with new turns' to
        // find duplicates: the value must never change.
        let messages = [
            Message::new("system", "You are  a SOC analyst."),
            Message::new("user", "Alert:\tEVIL.exe RAN\n on WS-001"),
            Message::new("assistant", "Threat type: Execution\nSeverity: high"),
        ];
        assert_eq!(
            normalised_hash(&messages),
            "cf583c2a630dba88577b270c6faefb72db4332d17431c72c5f446851c1a0549c"
        );
        let borrowed: Vec<TextMessage<'_>> = messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str().into()))
            .collect();
        assert_eq!(hash_of(&borrowed), normalised_hash(&messages));
    }

    #[test]
    fn copies_differing_in_case_and_spacing_hash_alike() {
        let a = [Message::new("user", "Alert:  EVIL.exe\n ran")];
        let b = [Message::new("user", "alert: evil.exe ran")];
        let c = [Message::new("assistant", "alert: evil.exe ran")];
        assert_eq!(normalised_hash(&a), normalised_hash(&b));
        assert_ne!(normalised_hash(&b), normalised_hash(&c));
        assert_eq!(normalised_hash(&a).len(), 64);
    }

    #[test]
    fn signals_describe_each_conversation() {
        let mut ok = candidate("conv_2", "malware");
        ok.turns[0].1.push(feedback(
            "fb_1",
            "2026-01-01T00:00:00Z",
            Some("A better answer."),
        ));
        ok.turns[0].1[0].rating = Some(4);
        let mut cut = candidate("conv_3", "phishing");
        with_answer(&mut cut.turns[0].0, "Threat ty", "length");
        cut.conversation.review.threat_type = None;
        cut.conversation.review.severity = None;
        let mut failed = candidate("conv_4", "malware");
        failed.turns[0].0.status = "upstream_error".into();

        let s = quality_signals(&[ok, cut, failed]);
        assert!(s[0].complete_answer && s[0].has_labels && s[0].has_rating && s[0].has_correction);
        assert!(!s[0].upstream_error);
        assert!(!s[1].complete_answer && !s[1].has_labels && !s[1].has_rating);
        assert_eq!(s[1].answer_chars, 9);
        assert!(s[2].upstream_error && !s[2].complete_answer);
        let json = serde_json::to_value(&s[1]).unwrap();
        assert_eq!(json["complete_answer"], false);
        assert_eq!(json["duplicate_of"], serde_json::Value::Null);
    }

    #[test]
    fn a_turn_gives_the_signals_its_conversation_would() {
        let mut c = candidate("conv_2", "malware");
        let turn = turn_signals(&c.turns[0].0);
        let whole = &quality_signals(std::slice::from_ref(&c))[0];
        assert!(turn.complete_answer && !turn.upstream_error);
        assert_eq!(turn.answer_chars as usize, whole.answer_chars);
        assert_eq!(turn.text_hash.as_deref(), Some(whole.text_hash.as_str()));
        with_answer(&mut c.turns[0].0, "Threat ty", "length");
        c.turns[0].0.status = "upstream_error".into();
        let cut = turn_signals(&c.turns[0].0);
        assert!(!cut.complete_answer && cut.upstream_error);
        assert_eq!(cut.answer_chars, 9);
    }

    #[test]
    fn duplicates_point_at_the_oldest_copy() {
        let a = candidate("conv_9", "malware");
        let mut a = a;
        a.turns[0].0.request["messages"][0]["content"] =
            "Alert: evil.exe ran on host-7 from a temp folder".into();
        let mut b = candidate("conv_5", "malware");
        b.turns[0].0.request["messages"][0]["content"] =
            "ALERT: EVIL.EXE   ran on host-7\nfrom a temp folder".into();
        let c = candidate("conv_7", "phishing");
        let s = quality_signals(&[a, b, c]);
        assert_eq!(s[0].duplicate_of.as_deref(), Some("conv_5"));
        assert_eq!(s[1].duplicate_of, None);
        assert_eq!(s[2].duplicate_of, None);
    }

    #[test]
    fn chains_ending_alike_are_told_apart_by_their_whole_history() {
        // Two chains about different alerts whose follow-ups and answers
        // are the same text.
        let chain = |id: &str| {
            let mut c = candidate(id, "malware");
            let mut next = c.turns[0].clone();
            next.0.request = serde_json::json!({"messages": [
                {"role": "user", "content": "Is the host isolated already?"}],
                "params": {"previous_response_id": "resp_1"}});
            with_answer(&mut next.0, "Not yet.", "stop");
            c.turns.push(next);
            c
        };
        let s = quality_signals(&[chain("conv_1"), chain("conv_2")]);
        assert_eq!(s[0].duplicate_of, None);
        assert_eq!(s[1].duplicate_of, None);
        let same = quality_signals(&[chain("conv_1"), chain("conv_1")]);
        assert_eq!(same[0].text_hash, same[1].text_hash);
        // Stored turn by turn, the follow-up's text alone says nothing.
        assert_eq!(turn_signals(&chain("conv_1").turns[1].0).text_hash, None);
        assert!(
            turn_signals(&chain("conv_1").turns[0].0)
                .text_hash
                .is_some()
        );
    }
}
