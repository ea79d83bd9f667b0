//! What the network and files control, as functions of arbitrary bytes:
//! the fuzz targets in `fuzz/` call these, and a unit test replays the
//! seeds and the inputs kept in `fuzz/regressions/` (each one failed
//! once) on the stable toolchain, so what a fuzzer found stays fixed.
//!
//! Each entry runs the code that reads such bytes in production, in the
//! order production does: a client's body as the request path reads it
//! (routing, threading, the body sent upstream) and the headers read with
//! it; an answer as the request path reads it when it completes
//! (threading), as the capture writer turns the exchange into a stored
//! record, and as a dataset makes that record a training example; the
//! config file. None of it may panic: on the request path a panic ends
//! the client's request with a 500 (a stream is cut), in the writer the
//! exchange is lost, in a dataset build the build fails, at start-up the
//! operator gets a backtrace instead of the key that is wrong.

use crate::capture::answer;
use crate::capture::responses;
use crate::capture::{BackgroundTasks, CaptureMeta, Redactor};
use crate::config::{ExtractorConfig, TaxonomyConfig};
use crate::curation::{AnswerTemplate, Candidate, build_example, dpo_line, sft_line};
use crate::evaluation::extract::Extractor;
use crate::exchange::{Exchange, Outcome, Wire};
use crate::openai::sse::Boundary;
use crate::proxy::ChatRequest;
use crate::routing::Route;
use crate::store::{CapturedTurn, ConversationRecord, ReviewStatus};
use bytes::Bytes;
use std::sync::LazyLock;
use std::time::Duration;

/// A client's request body, read as chat completions and as the Responses
/// API, then rewritten for the upstream model; the optional headers that
/// describe the exchange.
pub fn client_request(data: &[u8]) {
    for parse in [ChatRequest::parse, ChatRequest::parse_responses] {
        if let Ok(request) = parse(data) {
            let body = Bytes::copy_from_slice(data);
            let _ = request.body_for(&body, "gpt-4o-mini-2024-07-18");
        }
    }
    let _ = crate::feedback::parse_header(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = CaptureMeta::parse_tags(text);
    }
}

/// A config file, as `flywheel serve --config` reads it: parsed and
/// validated (a wrong key or value is an error naming it, never a panic).
pub fn config_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::Config::from_toml_str(text, "flywheel.toml", std::iter::empty());
    }
}

/// One exchange: the first byte chooses the route and whether it streamed,
/// the next two give the request's length, and the request and the answer
/// follow. The answer is read as the request path reads it when the
/// exchange completes, forwarded in chunks, then handed to the writer's
/// preparation of its record.
pub fn exchange(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (length, rest) = match rest {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => (0, rest),
    };
    let (request, response) = rest.split_at(length.min(rest.len()));
    let wire = if flags & 1 == 0 {
        Wire::Chat
    } else {
        Wire::Responses
    };
    let streamed = flags & 2 != 0;
    read_on_the_request_path(wire, streamed, response);
    let exchange = Exchange {
        inference_id: crate::ids::new_id("inf"),
        caller_id: "key_fuzz".into(),
        route: Route {
            alias: Some("triage".into()),
            version: Some("base".into()),
            provider: 0,
            upstream_model: "gpt-4o-mini".into(),
            candidate: false,
        },
        wire,
        streamed,
        request: Bytes::copy_from_slice(request),
        response: Bytes::copy_from_slice(response),
        outcome: if flags & 4 == 0 {
            Outcome::Ok
        } else {
            Outcome::Partial
        },
        status: 200,
        first_byte: Some(Duration::from_millis(1)),
        total: Duration::from_millis(2),
        meta: CaptureMeta {
            conversation_id: "conv_fuzz".into(),
            enabled: true,
            ..CaptureMeta::default()
        },
    };
    static REDACTOR: LazyLock<Option<Redactor>> =
        LazyLock::new(|| Redactor::new(&["credentials".to_string()]).ok());
    static BACKGROUND: LazyLock<Option<BackgroundTasks>> =
        LazyLock::new(|| BackgroundTasks::new(true, &[]).ok());
    let Some((redactor, background)) = REDACTOR.as_ref().zip(BACKGROUND.as_ref()) else {
        return;
    };
    if let Some(turn) = crate::capture::prepare(exchange, redactor, background) {
        trained_on(turn);
    }
}

/// The stored turn, approved as the one turn of its conversation (as it
/// was, and corrected), made a dataset's example through each answer
/// template and written as SFT and DPO lines.
fn trained_on(turn: CapturedTurn) {
    static EXTRACTOR: LazyLock<Option<Extractor>> = LazyLock::new(|| {
        Extractor::new(&ExtractorConfig::default(), &TaxonomyConfig::default()).ok()
    });
    let Some(extractor) = EXTRACTOR.as_ref() else {
        return;
    };
    // Read back as the store keeps it: a record capture wrote that does
    // not read back is a bug this target is for.
    let record = turn.stored_record();
    assert!(
        record.is_ok(),
        "a captured record does not read back: {record:?}"
    );
    let Ok(record) = record else {
        return;
    };
    let mut conversation = ConversationRecord::opening(&turn);
    conversation.inference_ids.push(record.id.clone());
    conversation.review.status = ReviewStatus::Approved;
    conversation.review.threat_type = Some("execution".into());
    conversation.review.severity = Some("high".into());
    let mut candidate = Candidate {
        conversation,
        turns: vec![(record, Vec::new())],
    };
    for correction in [
        None,
        Some("Threat type: execution\nSeverity: high\nEncoded PowerShell."),
    ] {
        candidate.conversation.review.correction = correction.map(String::from);
        for template in ["answer", "json", "labelled"] {
            let Ok(template) = AnswerTemplate::parse(template) else {
                continue;
            };
            if let Ok(example) =
                build_example(&candidate, "You triage alerts.", &template, extractor)
            {
                let _ = sft_line(&example);
                let _ = dpo_line(&example);
            }
        }
    }
}

/// What the request path reads of an answer: the end of a stream, the
/// event boundary an error event would follow, and the answer that
/// completes the thread key.
fn read_on_the_request_path(wire: Wire, streamed: bool, response: &[u8]) {
    let mut boundary = Boundary::default();
    for (i, chunk) in response.chunks(7).enumerate() {
        boundary.observe(chunk);
        let so_far = &response[..(i * 7 + chunk.len())];
        let _ = crate::proxy::completes(wire, chunk, so_far);
    }
    let _ = boundary.at_event_end();
    match wire {
        Wire::Responses => {
            let _ = responses::answered(response, streamed);
        }
        Wire::Chat if streamed => {
            let _ = answer::from_stream(response);
        }
        Wire::Chat => {
            let _ = answer::from_body(response);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The seeds (real bodies: bench's request, the simulator's answers,
    /// whole and streamed) and every input kept under
    /// `fuzz/regressions/<target>/` (each made a target fail once) run
    /// through their entry again.
    #[test]
    fn what_the_fuzzers_found_stays_fixed() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        type Entry = fn(&[u8]);
        let targets: [(&str, Entry); 3] = [
            ("client_request", super::client_request),
            ("exchange", super::exchange),
            ("config_file", super::config_file),
        ];
        for (target, entry) in targets {
            let mut replayed = 0;
            for kind in ["seeds", "regressions"] {
                let Ok(inputs) = std::fs::read_dir(root.join(kind).join(target)) else {
                    continue;
                };
                for input in inputs {
                    entry(&std::fs::read(input.unwrap().path()).unwrap());
                    replayed += 1;
                }
            }
            assert!(replayed > 0, "no seed for {target}");
        }
    }
}
