//! A dataset's lines as evaluation examples: each line's messages without
//! its final assistant answer, paired with its conversation (the dataset
//! keeps the ids in file order). The expected labels come from the
//! conversation's review, never from the example's target, so what an
//! answer template wrote cannot leak into the score.

use super::EvalError;
use crate::store::{DatasetSplit, Store};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// The line's place among the split's lines (train first for `all`):
    /// fixed for the dataset, so a resumed run finds its results by it
    /// even if a label changed meanwhile.
    pub position: u64,
    pub conversation_id: String,
    /// What the model is asked: the line's messages up to the answer.
    pub messages: Vec<Value>,
    pub threat_type: String,
    pub severity: Option<String>,
}

/// The examples of `split` (`validation`, or `all`: train then
/// validation) and how many lines were left out for want of a threat type
/// label on their conversation.
pub fn load_examples(
    store: &dyn Store,
    dataset_id: &str,
    split: &str,
) -> Result<(Vec<Example>, u64), EvalError> {
    let record = store
        .dataset(dataset_id)?
        .ok_or_else(|| EvalError::UnknownDataset(dataset_id.to_string()))?;
    let splits: &[DatasetSplit] = match split {
        "validation" => &[DatasetSplit::Validation],
        _ => &[DatasetSplit::Train, DatasetSplit::Validation],
    };
    let (mut examples, mut skipped, mut position) = (Vec::new(), 0, 0);
    for &s in splits {
        let ids = match s {
            DatasetSplit::Train => &record.train_ids,
            DatasetSplit::Validation => &record.validation_ids,
        };
        let file = store.dataset_file(dataset_id, s)?.unwrap_or_default();
        for (id, messages) in ids.iter().zip(prompts(dataset_id, &file, ids.len())?) {
            match labelled(store, id, messages, position)? {
                Some(example) => examples.push(example),
                None => skipped += 1,
            }
            position += 1;
        }
    }
    Ok((examples, skipped))
}

/// Each line's prompt; the file must have one line per id.
fn prompts(dataset: &str, file: &[u8], expected: usize) -> Result<Vec<Vec<Value>>, EvalError> {
    let problem = |problem: String| EvalError::Dataset {
        dataset: dataset.to_string(),
        problem,
    };
    let text = std::str::from_utf8(file).map_err(|e| problem(e.to_string()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() != expected {
        return Err(problem(format!(
            "{} lines for {expected} conversations",
            lines.len()
        )));
    }
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let value: Value =
                serde_json::from_str(line).map_err(|e| problem(format!("line {}: {e}", i + 1)))?;
            prompt(&value).ok_or_else(|| problem(format!("line {} has no messages", i + 1)))
        })
        .collect()
}

/// An SFT line's messages without the final assistant answer, or a DPO
/// line's input messages (which end before the answer already).
fn prompt(line: &Value) -> Option<Vec<Value>> {
    let mut messages = line
        .get("messages")
        .or_else(|| line.pointer("/input/messages"))?
        .as_array()?
        .clone();
    if messages.last().is_some_and(|m| m["role"] == "assistant") {
        messages.pop();
    }
    (!messages.is_empty()).then_some(messages)
}

fn labelled(
    store: &dyn Store,
    conversation_id: &str,
    messages: Vec<Value>,
    position: u64,
) -> Result<Option<Example>, EvalError> {
    let Some(conversation) = store.conversation(conversation_id)? else {
        return Ok(None);
    };
    let review = conversation.review;
    Ok(review.threat_type.map(|threat_type| Example {
        position,
        conversation_id: conversation_id.to_string(),
        messages,
        threat_type,
        severity: review.severity,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_final_answer_is_left_out() {
        let line = json!({"messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "Threat type: malware"},
        ]});
        let asked = prompt(&line).unwrap();
        assert_eq!(asked.len(), 2);
        assert_eq!(asked[1]["role"], "user");
        let dpo = json!({"input": {"messages": [{"role": "user", "content": "u"}]}});
        assert_eq!(prompt(&dpo).unwrap().len(), 1);
        assert!(prompt(&json!({"messages": []})).is_none());
    }

    #[test]
    fn a_line_without_a_label_is_skipped_and_the_others_keep_their_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(dir.path()).unwrap();
        let ids: Vec<String> = (0..3).map(|i| format!("conv_{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            let inference = crate::store::InferenceRecord::bare(&format!("inf_{i}"), id);
            store
                .store_captured(&mut [crate::store::CapturedTurn::plain(inference)])
                .unwrap();
            if i != 1 {
                store
                    .update_conversation(id, &mut |c| {
                        c.review.threat_type = Some("malware".into());
                    })
                    .unwrap();
            }
        }
        let line =
            r#"{"messages":[{"role":"user","content":"u"},{"role":"assistant","content":"a"}]}"#;
        let file = format!("{line}\n{line}\n{line}\n");
        let record = crate::store::DatasetRecord {
            id: "ds_1".into(),
            name: "n".into(),
            format: "sft".into(),
            created_at: "t".into(),
            created_by: "t".into(),
            filter: Value::Null,
            alias: None,
            base_model: None,
            validation_split: 1.0,
            report: Value::Null,
            train_ids: Vec::new(),
            validation_ids: ids,
        };
        store.insert_dataset(&record, b"", file.as_bytes()).unwrap();
        let (examples, skipped) = load_examples(store.as_ref(), "ds_1", "validation").unwrap();
        assert_eq!(skipped, 1);
        let positions: Vec<u64> = examples.iter().map(|e| e.position).collect();
        assert_eq!(positions, [0, 2]);
        assert_eq!(examples[1].conversation_id, "conv_2");
        assert_eq!(examples[1].messages.len(), 1, "the answer is left out");
    }

    #[test]
    fn a_file_that_does_not_match_its_ids_is_refused() {
        let file = b"{\"messages\":[{\"role\":\"user\",\"content\":\"u\"}]}\n";
        assert_eq!(prompts("ds", file, 1).unwrap().len(), 1);
        assert!(matches!(
            prompts("ds", file, 2),
            Err(EvalError::Dataset { .. })
        ));
    }
}
