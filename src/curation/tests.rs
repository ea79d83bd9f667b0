//! Tests of whole builds; fixtures and the OpenAI format checker live in
//! `tests/`.

mod fixtures;
mod openai_format;

pub(crate) use fixtures::{candidate, extractor, feedback, many, options, with_answer};
use openai_format::{check_dpo_line, check_jsonl, check_sft_line};

use super::*;
use crate::config::Config;
use serde_json::{Value, json};
use sha2::Digest;
use std::collections::BTreeSet;

#[test]
fn an_sft_build_writes_valid_files_and_a_full_report() {
    let candidates = many(&[("malware", 20), ("phishing", 10), ("benign", 5)]);
    let build = build_dataset(&candidates, &options(DatasetFormat::Sft));
    let r = &build.report;
    assert_eq!(check_jsonl(&build.train.jsonl, check_sft_line), Ok(28));
    assert_eq!(check_jsonl(&build.validation.jsonl, check_sft_line), Ok(7));
    assert_eq!(
        r.counts,
        Counts {
            candidates: 35,
            accepted: 35,
            rejected: 0,
            duplicates: 0,
            train: 28,
            validation: 7
        }
    );
    assert_eq!(r.by_threat_type["malware"], 20);
    assert!(
        r.ready_for_training && r.problems.is_empty(),
        "{:?}",
        r.problems
    );
    assert_eq!(build.train.conversation_ids.len(), 28);

    let files = format!("{}\0{}", build.train.jsonl, build.validation.jsonl);
    assert_eq!(r.content_hash, hex::encode(sha2::Sha256::digest(files)));
}

#[test]
fn the_report_has_exactly_the_fields_of_the_api() {
    let build = build_dataset(&many(&[("malware", 3)]), &options(DatasetFormat::Dpo));
    let v = serde_json::to_value(&build.report).unwrap();
    let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let want = [
        "format",
        "content_hash",
        "ready_for_training",
        "problems",
        "counts",
        "by_threat_type",
        "coverage",
        "rejections",
    ];
    assert_eq!(keys, want.into_iter().collect());
    assert_eq!(v["format"], "dpo");
    let counts: BTreeSet<&str> = v["counts"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        counts,
        [
            "candidates",
            "accepted",
            "rejected",
            "duplicates",
            "train",
            "validation"
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(v["coverage"]["total"], 16);
    assert_eq!(v["rejections"][0]["conversation_id"], "conv_malware_000");
    assert!(
        v["rejections"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("no analyst correction")
    );
}

#[test]
fn the_same_candidates_build_the_same_snapshot_in_any_order() {
    let mut candidates = many(&[("malware", 12), ("phishing", 7), ("discovery", 4)]);
    let a = build_dataset(&candidates, &options(DatasetFormat::Sft));
    candidates.reverse();
    candidates.swap(1, 9);
    let b = build_dataset(&candidates, &options(DatasetFormat::Sft));
    assert_eq!(a, b);
    let mut changed = candidates.clone();
    changed[0].conversation.review.severity = Some("low".into());
    let c = build_dataset(&changed, &options(DatasetFormat::Sft));
    assert_ne!(a.report.content_hash, c.report.content_hash);
}

#[test]
fn labels_never_appear_in_the_input() {
    const THREAT: &str = "zz-threat-label-only-in-review";
    const SEVERITY: &str = "zz-severity-label-only-in-review";
    let mut candidates = many(&[("x", 12)]);
    for (i, c) in candidates.iter_mut().enumerate() {
        c.conversation.review.threat_type = Some(THREAT.into());
        c.conversation.review.severity = Some(SEVERITY.into());
        c.conversation.review.correction = Some(format!("A corrected verdict, number {i}."));
        c.conversation.review.notes = Some(format!("{THREAT} {SEVERITY}"));
    }
    for (format, template) in [
        (DatasetFormat::Sft, "labelled"),
        (DatasetFormat::Sft, "json"),
        (DatasetFormat::Sft, "{answer} ({threat_type}, {severity})"),
        (DatasetFormat::Dpo, "labelled"),
    ] {
        let mut o = options(format);
        o.template = AnswerTemplate::parse(template).unwrap();
        o.validation_split = 0.5;
        let build = build_dataset(&candidates, &o);
        assert_eq!(
            build.report.counts.accepted, 12,
            "{:?}",
            build.report.rejections
        );
        let text = format!("{}{}", build.train.jsonl, build.validation.jsonl);
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let (inputs, target) = match format {
                DatasetFormat::Sft => {
                    let m = v["messages"].as_array().unwrap();
                    (m[..m.len() - 1].to_vec(), m[m.len() - 1].clone())
                }
                DatasetFormat::Dpo => (
                    v["input"]["messages"].as_array().unwrap().clone(),
                    v["preferred_output"][0].clone(),
                ),
            };
            for m in &inputs {
                let content = m["content"].as_str().unwrap();
                assert!(
                    !content.contains(THREAT) && !content.contains(SEVERITY),
                    "{template}: {content}"
                );
            }
            if format == DatasetFormat::Sft {
                assert!(
                    target["content"].as_str().unwrap().contains(THREAT),
                    "{template}"
                );
            }
        }
    }
}

#[test]
fn a_dpo_build_pairs_corrections_and_rejects_the_rest() {
    let mut candidates = many(&[("malware", 14), ("phishing", 4)]);
    for c in candidates.iter_mut().take(15) {
        let id = c.conversation.id.clone();
        c.conversation.review.correction = Some(format!(
            "Threat type: ransomware\nSeverity: critical\nFiles were encrypted ({id})."
        ));
    }
    let build = build_dataset(&candidates, &options(DatasetFormat::Dpo));
    let r = &build.report;
    let lines = check_jsonl(&build.train.jsonl, check_dpo_line).unwrap()
        + check_jsonl(&build.validation.jsonl, check_dpo_line).unwrap();
    assert_eq!(lines, 15);
    assert_eq!((r.counts.accepted, r.counts.rejected), (15, 3));
    let no_correction: Vec<&str> = r
        .rejections
        .iter()
        .map(|x| x.conversation_id.as_str())
        .collect();
    assert_eq!(
        no_correction,
        [
            "conv_phishing_001",
            "conv_phishing_002",
            "conv_phishing_003"
        ]
    );
    assert!(
        r.rejections
            .iter()
            .all(|x| x.reason.contains("no analyst correction"))
    );
    let first: Value = serde_json::from_str(build.train.jsonl.lines().next().unwrap()).unwrap();
    assert!(
        first["non_preferred_output"][0]["content"]
            .as_str()
            .unwrap()
            .starts_with("Threat type: ")
    );
}

#[test]
fn every_rejection_names_its_conversation_and_reason() {
    let mut candidates = many(&[("malware", 5)]);
    candidates[0].turns[0].0.request["messages"][0]["content"] = "hi".into();
    with_answer(&mut candidates[1].turns[0].0, "Threat type: mal", "length");
    candidates[2].turns[0].0.request["messages"] = json!([
        {"role": "user", "content": "a first question, long enough"},
        {"role": "system", "content": "A system prompt in the wrong place."},
    ]);
    candidates[3].conversation.review.severity = None;
    let mut o = options(DatasetFormat::Sft);
    o.template = AnswerTemplate::Json;
    let mut long = candidate("conv_zlong", "malware");
    long.turns[0].0.request["messages"][0]["content"] = "word ".repeat(700).into();
    o.limits.max_tokens = 600;
    candidates.push(long);
    let r = build_dataset(&candidates, &o).report;
    let reasons: Vec<(&str, &str)> = r
        .rejections
        .iter()
        .map(|x| (x.conversation_id.as_str(), x.reason.as_str()))
        .collect();
    assert_eq!(r.counts.rejected, 5, "{reasons:?}");
    assert!(
        reasons[0]
            .1
            .starts_with(r#"message 2 (user: "hi") has 2 characters; at least 10"#),
        "{reasons:?}"
    );
    assert!(
        reasons[1].1.contains("finish_reason \"length\""),
        "{reasons:?}"
    );
    assert!(
        reasons[2]
            .1
            .starts_with("its first message is a user message"),
        "{reasons:?}"
    );
    assert!(reasons[3].1.contains("needs a severity"), "{reasons:?}");
    assert_eq!(reasons[4].0, "conv_zlong");
    assert!(reasons[4].1.contains("tokens (o200k_base)"), "{reasons:?}");
}

#[test]
fn a_dpo_rejection_says_which_output_failed() {
    let mut c = candidate("conv_1", "malware");
    c.conversation.review.correction = Some("Too short".into());
    let r = build_dataset(&[c], &options(DatasetFormat::Dpo)).report;
    assert!(
        r.rejections[0]
            .reason
            .starts_with(r#"the preferred output: message 3 (assistant: "Too short") has 9"#),
        "{:?}",
        r.rejections
    );
}

#[test]
fn near_verbatim_duplicates_are_dropped_and_counted() {
    let mut candidates = many(&[("malware", 12)]);
    let mut copy = candidate("conv_zcopy", "malware");
    copy.turns[0].0.request["messages"][0]["content"] =
        "ALERT conv_malware_003:   EVIL.EXE ran on host-7\nfrom a temp folder".into();
    candidates.push(copy);
    let r = build_dataset(&candidates, &options(DatasetFormat::Sft)).report;
    assert_eq!(
        (r.counts.accepted, r.counts.duplicates, r.counts.rejected),
        (12, 1, 0)
    );
    assert_eq!(r.rejections[0].conversation_id, "conv_zcopy");
    assert_eq!(
        r.rejections[0].reason,
        "a near-verbatim duplicate of conv_malware_003, which is kept"
    );
}

#[test]
fn too_few_or_too_many_examples_say_by_how_many() {
    let few = build_dataset(&many(&[("malware", 7)]), &options(DatasetFormat::Sft)).report;
    assert!(!few.ready_for_training);
    assert_eq!(
        few.problems,
        [
            "7 examples accepted: 3 short of the minimum of 10 (fine_tuning.min_examples)",
            "the training file has 6 examples: 4 short of the 10 OpenAI requires",
        ]
    );
    let mut o = options(DatasetFormat::Sft);
    o.max_examples = 20;
    let many_ = build_dataset(&many(&[("malware", 25)]), &o).report;
    assert!(!many_.ready_for_training);
    assert_eq!(
        many_.problems,
        [
            "25 examples accepted: 5 over the maximum of 20 (fine_tuning.max_examples); narrow the filter"
        ]
    );
}

#[test]
fn coverage_counts_the_taxonomys_threat_types_with_examples() {
    let mut o = options(DatasetFormat::Sft);
    o.taxonomy.threat_types = ["malware", "phishing", "exfiltration", "benign"]
        .map(String::from)
        .to_vec();
    let mut candidates = many(&[("malware", 8), ("benign", 3), ("not_in_taxonomy", 1)]);
    candidates[0].conversation.review.threat_type = None;
    candidates[0].conversation.review.severity = None;
    let r = build_dataset(&candidates, &o).report;
    assert_eq!(
        r.coverage,
        Coverage {
            covered: 2,
            total: 4,
            missing: vec!["phishing".into(), "exfiltration".into()]
        }
    );
    assert_eq!(r.by_threat_type.get("malware"), Some(&7));
    assert_eq!(r.by_threat_type.get("not_in_taxonomy"), Some(&1));
}

#[test]
fn options_come_from_the_config() {
    let toml = r#"
[[providers]]
name = "sim"
base_url = "http://127.0.0.1:9"

[[models]]
name = "triage"
model_type = "threat_detection"
  [[models.versions]]
  name = "base"
  provider = "sim"
  model = "gpt-4o-mini"

[fine_tuning]
answer_template = "json"
max_message_chars = 2000
[fine_tuning.token_limits]
"gpt-4o-mini" = 30000
"#;
    let config = Config::from_toml_str(toml, "t", []).unwrap();
    let o = BuildOptions::from_config(
        &config,
        DatasetFormat::Sft,
        "gpt-4o-mini-2024-07-18",
        Some(0.1),
    )
    .unwrap();
    assert_eq!(o.template, AnswerTemplate::Json);
    assert_eq!(
        (o.limits.max_message_chars, o.limits.max_tokens),
        (2000, 30000)
    );
    assert_eq!(o.validation_split, 0.1);
    assert_eq!(o.min_examples, 50);
}
