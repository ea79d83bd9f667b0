//! One conversation made into one training example: the messages of its
//! last turn's request, that turn's answer (or the analyst's correction of
//! it) as the target, and the system prompt policy. An answer the
//! analyst's labels contradict is never a target: without a correction
//! the conversation is refused.
//!
//! A Responses-API turn that continues what the provider stored (a
//! `previous_response_id` or a `conversation`) sent only what was new;
//! the earlier turns' messages and answers are put in front of it, as the
//! provider put them, so that an example holds what the model saw.

use super::template::{AnswerTemplate, Labels};
use crate::evaluation::extract::Extractor;
use crate::store::{ConversationRecord, FeedbackRecord, InferenceRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;

/// A conversation offered for a dataset, with its turns in order, each
/// with the feedback given on it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub conversation: ConversationRecord,
    pub turns: Vec<(InferenceRecord, Vec<FeedbackRecord>)>,
}

/// A chat message as training data carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// What a conversation teaches, before a format writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub conversation_id: String,
    pub threat_type: Option<String>,
    pub severity: Option<String>,
    /// The messages before the answer, the system message first.
    pub input: Vec<Message>,
    /// The answer as the model gave it, if it gave one.
    pub answer: Option<String>,
    pub correction: Option<String>,
    /// What the model should say: the correction, else the answer, written
    /// through the answer template. Labels appear here and only here.
    pub target: String,
}

/// Why a conversation whose answer says otherwise than its analyst's
/// labels, and that nobody corrected, is no example.
pub const LABELS_DISAGREE: &str = "labels disagree with the answer; add a correction";

/// Builds the example of `candidate`, or says why it cannot be one.
/// Without a system message of its own, `system_prompt` goes first; what
/// an answer says of its threat type and severity is read by `extractor`.
pub fn build_example(
    candidate: &Candidate,
    system_prompt: &str,
    template: &AnswerTemplate,
    extractor: &Extractor,
) -> Result<Example, String> {
    let (turn, _) = candidate
        .turns
        .last()
        .ok_or("the conversation has no turns")?;
    let mut input = history(&candidate.turns)?;
    if !input.iter().any(|m| m.role == "system") {
        input.insert(0, Message::new("system", system_prompt));
    }
    let answer = answer_text(turn)?;
    let correction = correction(candidate);
    let review = &candidate.conversation.review;
    let labels = Labels {
        threat_type: review.threat_type.as_deref(),
        severity: review.severity.as_deref(),
    };
    let source = match (&correction, complete_answer(turn, answer)) {
        (Some(c), _) => c.clone(),
        // The analyst said the answer is wrong but gave no right one:
        // training on it would teach what they rejected.
        (None, Ok(a)) if contradicts(labels, a, extractor) => return Err(LABELS_DISAGREE.into()),
        (None, Ok(a)) => a.to_string(),
        (None, Err(why)) => return Err(why),
    };
    Ok(Example {
        conversation_id: candidate.conversation.id.clone(),
        threat_type: review.threat_type.clone(),
        severity: review.severity.clone(),
        target: template.render(labels, &source)?,
        input,
        answer: answer.map(String::from),
        correction,
    })
}

/// Whether `answer` states a threat type or severity other than the
/// labels (an answer that states none contradicts nothing).
fn contradicts(labels: Labels<'_>, answer: &str, extractor: &Extractor) -> bool {
    let stated = extractor.extract(answer);
    let differs = |label: Option<&str>, said: Option<String>| matches!((label, said), (Some(label), Some(said)) if label != said);
    differs(labels.threat_type, stated.threat_type) || differs(labels.severity, stated.severity)
}

/// Why a conversation that opens by continuing a stored response is no
/// example.
const HISTORY_UNKNOWN: &str = "its first turn continues a response this conversation does not hold (`previous_response_id`: not captured, or in the conversation it branched from); what the model saw before it is unknown";

/// The messages the last turn's model saw before its answer: the last
/// request's own, preceded, while turns continue stored state, by the
/// earlier turns' messages and answers. The provider does not carry
/// `instructions` over, so earlier turns' system messages are left out
/// and the last turn's come first.
fn history(turns: &[Turn]) -> Result<Vec<Message>, String> {
    let Some(((last, _), earlier)) = turns.split_last() else {
        return Err("the conversation has no turns".into());
    };
    let own = request_messages(last, earlier)?;
    if continues_stored(last) == Continues::Nothing {
        return Ok(own);
    }
    // A conversation object starts empty unless created with items,
    // which pass through Flywheel uncaptured: its first captured turn is
    // taken as its start. A `previous_response_id` there names a response
    // that was not captured.
    let start = match earlier
        .iter()
        .rposition(|(turn, _)| continues_stored(turn) == Continues::Nothing)
    {
        Some(start) => start,
        None if continues_stored(&turns[0].0) == Continues::Conversation => 0,
        None => return Err(HISTORY_UNKNOWN.into()),
    };
    let (system, new): (Vec<Message>, Vec<Message>) =
        own.into_iter().partition(|m| m.role == "system");
    let mut messages = system;
    for (n, (turn, _)) in earlier.iter().enumerate().skip(start) {
        let at = |why: String| format!("turn {}: {why}", n + 1);
        messages.extend(
            request_messages(turn, &earlier[..n])
                .map_err(at)?
                .into_iter()
                .filter(|m| m.role != "system"),
        );
        let answer = earlier_answer(turn).map_err(at)?;
        messages.push(Message::new("assistant", answer));
    }
    messages.extend(new);
    Ok(messages)
}

/// What stored state a turn continues, having sent only what is new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Continues {
    /// It sent its whole history.
    Nothing,
    /// A Responses request naming the response it follows
    /// (`previous_response_id`).
    Response,
    /// A Responses request in a conversation the provider keeps
    /// (`conversation`).
    Conversation,
}

pub(super) fn continues_stored(turn: &InferenceRecord) -> Continues {
    let params = &turn.request["params"];
    if params["previous_response_id"]
        .as_str()
        .is_some_and(|id| !id.trim().is_empty())
    {
        Continues::Response
    } else if params["conversation"].is_null() {
        Continues::Nothing
    } else {
        Continues::Conversation
    }
}

/// An earlier turn's answer, which the model saw as part of the history.
fn earlier_answer(turn: &InferenceRecord) -> Result<&str, String> {
    let message = &turn.response["choices"][0]["message"];
    if message.get("tool_calls").is_some_and(|c| !c.is_null()) {
        return Err("its answer calls tools; examples carry text messages only".into());
    }
    message["content"]
        .as_str()
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| "it has no answer text, so what the model saw after it is unknown".into())
}

/// A turn of a candidate, with the feedback given on it.
type Turn = (InferenceRecord, Vec<FeedbackRecord>);

/// The request's messages, an earlier answer in place of each reference
/// to it (`item_reference`, resolved among the `earlier` turns); tool use
/// and non-text content are refused, as examples carry text messages
/// only.
fn request_messages(turn: &InferenceRecord, earlier: &[Turn]) -> Result<Vec<Message>, String> {
    let Some(messages) = turn.request["messages"].as_array() else {
        return Err("its last turn's request has no messages".into());
    };
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let at = |why: String| format!("request message {}: {why}", i + 1);
        match m["item_reference"].as_str() {
            Some(id) => out.extend(referenced(id, earlier).map_err(at)?),
            None => out.push(message(m).map_err(at)?),
        }
    }
    Ok(out)
}

/// The message an `item_reference` stands for: the answer of the earlier
/// turn whose output holds the item. A reasoning item stands for nothing
/// an example carries.
fn referenced(id: &str, earlier: &[Turn]) -> Result<Option<Message>, String> {
    let (turn, kind) = earlier
        .iter()
        .rev()
        .find_map(|(turn, _)| {
            let items = turn.response["output_items"].as_array()?;
            let item = items.iter().find(|item| item["id"] == id)?;
            Some((turn, item["type"].as_str().unwrap_or_default()))
        })
        .ok_or_else(|| {
            format!("names a stored item ({id}) that no earlier turn of this conversation answered")
        })?;
    match kind {
        "reasoning" => Ok(None),
        "message" => earlier_answer(turn).map(|answer| Some(Message::new("assistant", answer))),
        other => Err(format!(
            "names a stored {other} item ({id}); examples carry text messages only"
        )),
    }
}

fn message(m: &Value) -> Result<Message, String> {
    text_message(m).map(|(role, content)| Message::new(role, &content))
}

/// A message's role as examples name it and its text, borrowed from the
/// record where it is one string.
fn text_message(m: &Value) -> Result<(&str, Cow<'_, str>), String> {
    let role = match m["role"].as_str() {
        // Newer clients send the system prompt as `developer`.
        Some("system" | "developer") => "system",
        Some(role @ ("user" | "assistant")) => role,
        Some(role @ ("tool" | "function")) => {
            return Err(format!(
                "is a {role} message; examples carry text messages only"
            ));
        }
        Some(other) => return Err(format!("has the unknown role \"{other}\"")),
        None => return Err("has no role".into()),
    };
    if m.get("tool_calls").is_some_and(|c| !c.is_null()) {
        return Err("calls tools; examples carry text messages only".into());
    }
    let content = text(&m["content"]).ok_or("has no text content (images or audio?)")?;
    Ok((role, content))
}

/// A string, or the text parts of a content array.
fn text(content: &Value) -> Option<Cow<'_, str>> {
    if let Some(s) = content.as_str() {
        return Some(Cow::Borrowed(s));
    }
    let parts = content.as_array()?;
    parts
        .iter()
        .map(|p| (p["type"] == "text").then(|| p["text"].as_str()).flatten())
        .collect::<Option<Vec<_>>>()
        .map(|texts| Cow::Owned(texts.concat()))
}

/// The first choice's text, if the turn has one.
fn answer_text(turn: &InferenceRecord) -> Result<Option<&str>, String> {
    let message = &turn.response["choices"][0]["message"];
    if message.get("tool_calls").is_some_and(|c| !c.is_null()) {
        return Err("its last answer calls tools; examples carry text messages only".into());
    }
    Ok(message["content"].as_str().filter(|s| !s.trim().is_empty()))
}

/// The first choice's finish reason.
pub(super) fn finish_reason(turn: &InferenceRecord) -> Option<&str> {
    turn.response["choices"][0]["finish_reason"].as_str()
}

/// The answer if the model finished it; otherwise why it cannot be a target.
fn complete_answer<'a>(turn: &InferenceRecord, answer: Option<&'a str>) -> Result<&'a str, String> {
    if turn.status != "ok" {
        return Err(format!(
            "its last turn ended with status \"{}\" and no analyst corrected it",
            turn.status
        ));
    }
    let answer = answer.ok_or("its last turn has no answer text and no analyst corrected it")?;
    match finish_reason(turn) {
        Some("stop") => Ok(answer),
        Some(other) => Err(format!(
            "its last answer stopped with finish_reason \"{other}\" (not a complete answer) and no analyst corrected it"
        )),
        None => Err("its last answer has no finish_reason and no analyst corrected it".into()),
    }
}

/// The review's correction, else the newest correction in feedback on the
/// last turn (feedback on earlier turns corrects answers that are not this
/// example's target).
pub(super) fn correction(candidate: &Candidate) -> Option<String> {
    let given = |c: &Option<String>| {
        c.as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(String::from)
    };
    given(&candidate.conversation.review.correction).or_else(|| {
        let (_, feedback) = candidate.turns.last()?;
        feedback
            .iter()
            .filter(|f| given(&f.correction).is_some())
            .max_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)))
            .and_then(|f| given(&f.correction))
    })
}

/// A text message as the text hash reads it: role and text, borrowed
/// from the record where they can be (capture hashes every turn).
pub(super) type TextMessage<'a> = (&'a str, Cow<'a, str>);

/// The last turn's request messages and answer (the correction, when
/// there is one) as far as they are text, for signals that must not fail
/// on what an example would refuse.
pub(super) fn lenient_text(candidate: &Candidate) -> Vec<TextMessage<'_>> {
    let Some((turn, _)) = candidate.turns.last() else {
        return Vec::new();
    };
    turn_text(turn, correction(candidate).map(Cow::Owned))
}

/// One turn's request messages and `answer` (its own when `None`), as far
/// as they are text.
pub(super) fn turn_text<'a>(
    turn: &'a InferenceRecord,
    answer: Option<Cow<'a, str>>,
) -> Vec<TextMessage<'a>> {
    let mut messages: Vec<TextMessage<'a>> = turn.request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| text_message(m).ok())
        .collect();
    let own = || answer_text(turn).ok().flatten().map(Cow::Borrowed);
    if let Some(answer) = answer.or_else(own) {
        messages.push(("assistant", answer));
    }
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::curation::tests::{candidate, extractor, feedback, with_answer};

    fn labelled() -> AnswerTemplate {
        AnswerTemplate::parse("labelled").unwrap()
    }

    #[test]
    fn the_configured_prompt_goes_first_when_the_conversation_has_none() {
        let ex = build_example(
            &candidate("conv_1", "malware"),
            "Be an analyst.",
            &labelled(),
            &extractor(),
        )
        .unwrap();
        assert_eq!(ex.input[0], Message::new("system", "Be an analyst."));
        assert_eq!(ex.input[1].role, "user");
    }

    #[test]
    fn the_conversations_own_system_message_is_kept() {
        let mut c = candidate("conv_1", "malware");
        c.turns[0].0.request["messages"] = serde_json::json!([
            {"role": "developer", "content": "Our own triage prompt."},
            {"role": "user", "content": [{"type": "text", "text": "Alert: "}, {"type": "text", "text": "evil.exe ran"}]},
        ]);
        let ex = build_example(&c, "Be an analyst.", &labelled(), &extractor()).unwrap();
        assert_eq!(
            ex.input,
            [
                Message::new("system", "Our own triage prompt."),
                Message::new("user", "Alert: evil.exe ran")
            ]
        );
    }

    #[test]
    fn the_last_turn_is_the_example_and_a_correction_replaces_its_answer() {
        let mut c = candidate("conv_1", "malware");
        let mut second = c.turns[0].clone();
        second.0.request["messages"] = serde_json::json!([
            {"role": "user", "content": "first question here"},
            {"role": "assistant", "content": "first answer given"},
            {"role": "user", "content": "and the follow-up?"},
        ]);
        with_answer(&mut second.0, "The model's answer.", "stop");
        second.1 = vec![
            feedback("fb_1", "2026-01-01T00:00:01Z", Some("older correction")),
            feedback("fb_2", "2026-01-01T00:00:02Z", Some("newest correction")),
            feedback("fb_3", "2026-01-01T00:00:03Z", None),
        ];
        c.turns.push(second);
        let ex =
            build_example(&c, "Be an analyst.", &AnswerTemplate::Answer, &extractor()).unwrap();
        assert_eq!(ex.input.len(), 4);
        assert_eq!(ex.answer.as_deref(), Some("The model's answer."));
        assert_eq!(ex.target, "newest correction");

        c.conversation.review.correction = Some("the review's correction".into());
        let ex =
            build_example(&c, "Be an analyst.", &AnswerTemplate::Answer, &extractor()).unwrap();
        assert_eq!(ex.target, "the review's correction");
    }

    #[test]
    fn incomplete_answers_are_refused_unless_corrected() {
        let mut c = candidate("conv_1", "malware");
        with_answer(&mut c.turns[0].0, "Threat type: mal", "length");
        let e = build_example(&c, "p", &labelled(), &extractor()).unwrap_err();
        assert!(e.contains("finish_reason \"length\""), "{e}");

        c.turns[0].0.status = "upstream_error".into();
        let e = build_example(&c, "p", &labelled(), &extractor()).unwrap_err();
        assert!(e.contains("status \"upstream_error\""), "{e}");

        c.conversation.review.correction = Some("Threat type: malware\nIt is.".into());
        let ex = build_example(&c, "p", &labelled(), &extractor()).unwrap();
        assert!(ex.target.ends_with("It is."), "{}", ex.target);
    }

    #[test]
    fn tool_use_and_images_are_refused_with_the_message_named() {
        let mut c = candidate("conv_1", "malware");
        c.turns[0].0.request["messages"] = serde_json::json!([
            {"role": "user", "content": "look this up please"},
            {"role": "tool", "content": "result", "tool_call_id": "t"},
        ]);
        let e = build_example(&c, "p", &labelled(), &extractor()).unwrap_err();
        assert_eq!(
            e,
            "request message 2: is a tool message; examples carry text messages only"
        );

        c.turns[0].0.request["messages"] = serde_json::json!([
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
        ]);
        let e = build_example(&c, "p", &labelled(), &extractor()).unwrap_err();
        assert!(
            e.starts_with("request message 1: has no text content"),
            "{e}"
        );

        c.turns.clear();
        assert_eq!(
            build_example(&c, "p", &labelled(), &extractor()).unwrap_err(),
            "the conversation has no turns"
        );
    }

    /// A Responses turn after `c`'s last: `params` says what it continues.
    fn follow_up(c: &mut Candidate, params: serde_json::Value, answer: &str) {
        let mut next = c.turns[0].clone();
        next.0.request = serde_json::json!({"messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": format!("follow-up {}", c.turns.len())},
        ], "params": params});
        with_answer(&mut next.0, answer, "stop");
        c.turns.push(next);
    }

    fn texts(ex: &Example) -> Vec<(String, String)> {
        ex.input
            .iter()
            .map(|m| (m.role.clone(), m.content.clone()))
            .collect()
    }

    #[test]
    fn a_chain_of_stored_responses_is_the_whole_history_without_earlier_instructions() {
        let mut c = candidate("conv_1", "malware");
        c.turns[0].0.request["messages"]
            .as_array_mut()
            .unwrap()
            .insert(
                0,
                serde_json::json!({"role": "system", "content": "Triage alerts."}),
            );
        let first_answer = answer_text(&c.turns[0].0).unwrap().unwrap().to_string();
        let alert = c.turns[0].0.request["messages"][1]["content"]
            .as_str()
            .unwrap()
            .to_string();
        follow_up(
            &mut c,
            serde_json::json!({"previous_response_id": "resp_1"}),
            "Second.",
        );
        follow_up(
            &mut c,
            serde_json::json!({"previous_response_id": "resp_2"}),
            "Third.",
        );
        let ex = build_example(&c, "p", &AnswerTemplate::Answer, &extractor()).unwrap();
        let s = |role: &str, text: &str| (role.to_string(), text.to_string());
        assert_eq!(
            texts(&ex),
            [
                s("system", "Answer briefly."),
                s("user", &alert),
                s("assistant", &first_answer),
                s("user", "follow-up 1"),
                s("assistant", "Second."),
                s("user", "follow-up 2"),
            ]
        );
        assert_eq!(ex.answer.as_deref(), Some("Third."));

        // A turn that resends its history starts it again.
        c.turns[1].0.request["params"] = serde_json::json!({});
        let ex = build_example(&c, "p", &AnswerTemplate::Answer, &extractor()).unwrap();
        assert_eq!(
            texts(&ex),
            [
                s("system", "Answer briefly."),
                s("user", "follow-up 1"),
                s("assistant", "Second."),
                s("user", "follow-up 2"),
            ]
        );
    }

    #[test]
    fn a_conversation_object_starts_at_its_first_captured_turn() {
        let mut c = candidate("conv_1", "malware");
        c.turns[0].0.request["params"] = serde_json::json!({"conversation": "conv_abc"});
        let alert = c.turns[0].0.request["messages"][0]["content"]
            .as_str()
            .unwrap()
            .to_string();
        follow_up(
            &mut c,
            serde_json::json!({"conversation": {"id": "conv_abc"}}),
            "Second.",
        );
        let ex = build_example(&c, "p", &AnswerTemplate::Answer, &extractor()).unwrap();
        assert_eq!(ex.input.len(), 4, "{:?}", texts(&ex));
        assert_eq!(ex.input[0].content, "Answer briefly.");
        assert_eq!(ex.input[1].content, alert);
        assert_eq!(ex.input[3].content, "follow-up 1");
    }

    #[test]
    fn a_chain_whose_start_was_not_captured_or_whose_answers_are_not_text_is_refused() {
        let mut c = candidate("conv_1", "malware");
        c.turns[0].0.request["params"] = serde_json::json!({"previous_response_id": "resp_0"});
        let e = build_example(&c, "p", &labelled(), &extractor()).unwrap_err();
        assert_eq!(e, HISTORY_UNKNOWN);

        let mut c = candidate("conv_1", "malware");
        c.turns[0].0.response["choices"][0]["message"]["content"] = serde_json::Value::Null;
        follow_up(
            &mut c,
            serde_json::json!({"previous_response_id": "resp_1"}),
            "Second.",
        );
        let e = build_example(&c, "p", &labelled(), &extractor()).unwrap_err();
        assert!(e.starts_with("turn 1: it has no answer text"), "{e}");

        c.turns[0].0.response["choices"][0]["message"]["tool_calls"] =
            serde_json::json!([{"id": "t", "type": "function"}]);
        let e = build_example(&c, "p", &labelled(), &extractor()).unwrap_err();
        assert_eq!(
            e,
            "turn 1: its answer calls tools; examples carry text messages only"
        );
    }

    #[test]
    fn a_reference_to_an_earlier_output_item_is_that_turns_answer() {
        let mut c = candidate("conv_1", "malware");
        let first_answer = answer_text(&c.turns[0].0).unwrap().unwrap().to_string();
        c.turns[0].0.response["output_items"] = serde_json::json!([
            {"id": "rs_1", "type": "reasoning"}, {"id": "msg_1", "type": "message"},
            {"id": "fc_1", "type": "function_call"}]);
        let alert = c.turns[0].0.request["messages"][0].clone();
        let mut next = c.turns[0].clone();
        next.0.request = serde_json::json!({"messages": [alert,
            {"role": "assistant", "content": null, "item_reference": "rs_1"},
            {"role": "assistant", "content": null, "item_reference": "msg_1"},
            {"role": "user", "content": "and?"}], "params": {}});
        with_answer(&mut next.0, "Second.", "stop");
        c.turns.push(next);
        let ex = build_example(&c, "p", &AnswerTemplate::Answer, &extractor()).unwrap();
        let roles: Vec<&str> = ex.input.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert_eq!(ex.input[2].content, first_answer);

        let refer = |c: &mut Candidate, id: &str| {
            c.turns[1].0.request["messages"][2]["item_reference"] = serde_json::json!(id);
            build_example(c, "p", &AnswerTemplate::Answer, &extractor()).unwrap_err()
        };
        assert_eq!(
            refer(&mut c, "fc_1"),
            "request message 3: names a stored function_call item (fc_1); examples carry text messages only"
        );
        assert_eq!(
            refer(&mut c, "msg_9"),
            "request message 3: names a stored item (msg_9) that no earlier turn of this conversation answered"
        );
    }

    /// The app asked for a JSON verdict and got one.
    const JSON_ANSWER: &str = r#"{"threat_type": "malware", "severity": "high", "rationale": "evil.exe ran from a temp folder"}"#;

    #[test]
    fn by_default_a_json_answer_is_the_target_verbatim() {
        let mut c = candidate("conv_1", "malware");
        with_answer(&mut c.turns[0].0, JSON_ANSWER, "stop");
        let ex = build_example(&c, "p", &AnswerTemplate::Answer, &extractor()).unwrap();
        assert_eq!(ex.target, JSON_ANSWER);
        let verdict: serde_json::Value = serde_json::from_str(&ex.target).unwrap();
        assert_eq!(verdict["threat_type"], "malware");
    }

    #[test]
    fn labels_that_contradict_the_answer_need_a_correction() {
        let mut c = candidate("conv_1", "phishing");
        with_answer(&mut c.turns[0].0, JSON_ANSWER, "stop");
        for template in [AnswerTemplate::Answer, labelled(), AnswerTemplate::Json] {
            let e = build_example(&c, "p", &template, &extractor()).unwrap_err();
            assert_eq!(e, LABELS_DISAGREE);
        }
        assert_eq!(
            LABELS_DISAGREE,
            "labels disagree with the answer; add a correction"
        );
        // A severity the answer does not share contradicts it too.
        let mut c = candidate("conv_2", "malware");
        c.conversation.review.severity = Some("low".into());
        let e = build_example(&c, "p", &AnswerTemplate::Answer, &extractor()).unwrap_err();
        assert_eq!(e, LABELS_DISAGREE);
        // An answer that states no threat type contradicts no label.
        with_answer(&mut c.turns[0].0, "I cannot tell from this alone.", "stop");
        c.conversation.review.severity = Some("high".into());
        let ex = build_example(&c, "p", &AnswerTemplate::Answer, &extractor()).unwrap();
        assert_eq!(ex.target, "I cannot tell from this alone.");
    }

    #[test]
    fn a_correction_is_the_target_verbatim_whatever_the_answer_said() {
        let mut c = candidate("conv_1", "phishing");
        with_answer(&mut c.turns[0].0, JSON_ANSWER, "stop");
        let correction = r#"{"threat_type": "phishing", "severity": "high", "rationale": "the macro came from a mail attachment"}"#;
        c.conversation.review.correction = Some(correction.into());
        let ex = build_example(&c, "p", &AnswerTemplate::Answer, &extractor()).unwrap();
        assert_eq!(ex.target, correction);
        assert_eq!(ex.answer.as_deref(), Some(JSON_ANSWER));
    }
}
