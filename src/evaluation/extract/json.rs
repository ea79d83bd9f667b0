//! Finding the JSON object in a model's answer: the whole answer, or the
//! first object inside prose or a fenced code block.

use serde_json::{Map, Value};

/// Opening braces tried before giving up, so that text full of braces
/// that begin no object cannot make the search quadratic.
const MAX_ATTEMPTS: usize = 64;

pub(super) fn find_object(answer: &str) -> Option<Map<String, Value>> {
    if let Ok(Value::Object(map)) = serde_json::from_str(answer.trim()) {
        return Some(map);
    }
    answer
        .match_indices('{')
        .take(MAX_ATTEMPTS)
        .find_map(|(at, _)| object_at(answer.get(at..)?))
}

/// The object that `text` begins with, whatever follows it.
fn object_at(text: &str) -> Option<Map<String, Value>> {
    match serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .next()?
    {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// The string at a dotted `path` (`verdict.threat_type`).
pub(super) fn string_at<'a>(object: &'a Map<String, Value>, path: &[String]) -> Option<&'a str> {
    let (last, parents) = path.split_last()?;
    let mut current = object;
    for key in parents {
        current = current.get(key)?.as_object()?;
    }
    current.get(last)?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(answer: &str) -> Option<Vec<String>> {
        find_object(answer).map(|m| m.keys().cloned().collect())
    }

    #[test]
    fn whole_answers_embedded_objects_and_fences_are_found() {
        assert_eq!(keys(r#" {"a": 1} "#), Some(vec!["a".into()]));
        assert_eq!(
            keys("Here {is} my verdict: {\"b\": {\"c\": 2}} and more {\"d\": 3}"),
            Some(vec!["b".into()])
        );
        assert_eq!(
            keys("Verdict:\n```json\n{\"e\": \"x\"}\n```\nDone."),
            Some(vec!["e".into()])
        );
        assert_eq!(keys("no object { here"), None);
        assert_eq!(keys("[1, 2]"), None);
    }

    #[test]
    fn dotted_paths_reach_nested_strings_only() {
        let object = find_object(r#"{"v": {"t": "malware", "n": 3}, "s": "high"}"#).unwrap();
        let path = |p: &str| p.split('.').map(String::from).collect::<Vec<_>>();
        assert_eq!(string_at(&object, &path("v.t")), Some("malware"));
        assert_eq!(string_at(&object, &path("s")), Some("high"));
        assert_eq!(string_at(&object, &path("v.n")), None);
        assert_eq!(string_at(&object, &path("s.x")), None);
        assert_eq!(string_at(&object, &[]), None);
    }
}
