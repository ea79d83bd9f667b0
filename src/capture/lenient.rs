//! Reading a body for its record even where strict JSON parsing into a
//! tree would fail, so every forwarded request is captured with its
//! messages. Two things valid on the wire defeat it: a lone UTF-16
//! surrogate escape (`"\ud800"`, what JavaScript sends for an emoji cut in
//! half), read here as U+FFFD; and nesting deeper than the parser's 128
//! levels, kept here down to where it gets too deep, the rest replaced by
//! a marker and noted in the record's `omitted` list.

use memchr::memmem::Finder;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// What the record says in place of a part it could not hold.
pub const TOO_DEEP: &str = "[omitted: nested deeper than 128 levels]";

/// How many levels of objects and arrays are opened one by one before a
/// part that is still too deep is replaced; each level costs a parse of
/// the part, so this stays small.
const LEVELS: usize = 4;

/// A body read as JSON; `omitted` lists the paths of parts replaced by
/// [`TOO_DEEP`]. `None` when the bytes are not JSON at all.
pub struct Lenient {
    pub value: Value,
    pub omitted: Vec<String>,
}

pub fn parse(bytes: &[u8]) -> Option<Lenient> {
    let bytes = without_lone_surrogates(bytes);
    if let Ok(value) = serde_json::from_slice::<Value>(&bytes) {
        return Some(Lenient {
            value,
            omitted: Vec::new(),
        });
    }
    let raw: Box<RawValue> = serde_json::from_slice(&bytes).ok()?;
    let mut omitted = Vec::new();
    let value = open(&raw, "", LEVELS, &mut omitted);
    Some(Lenient { value, omitted })
}

/// Parses `raw`, opening objects and arrays member by member while the
/// whole is too deep to parse at once.
fn open(raw: &RawValue, path: &str, levels: usize, omitted: &mut Vec<String>) -> Value {
    if let Ok(value) = serde_json::from_str::<Value>(raw.get()) {
        return value;
    }
    if levels > 0 {
        if let Ok(members) = serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(raw.get()) {
            let object: Map<String, Value> = members
                .iter()
                .map(|(k, v)| (k.clone(), open(v, &join(path, k), levels - 1, omitted)))
                .collect();
            return Value::Object(object);
        }
        if let Ok(items) = serde_json::from_str::<Vec<Box<RawValue>>>(raw.get()) {
            return Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| open(v, &format!("{path}[{i}]"), levels - 1, omitted))
                    .collect(),
            );
        }
    }
    omitted.push(if path.is_empty() {
        ".".into()
    } else {
        path.into()
    });
    Value::String(TOO_DEEP.into())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The bytes with every `\uXXXX` escape of an unpaired surrogate written
/// as `\ufffd` (the same length, so nothing else moves); borrowed when
/// there is none.
pub fn without_lone_surrogates(bytes: &[u8]) -> Cow<'_, [u8]> {
    // Most bodies hold no surrogate escape at all.
    if !may_hold_surrogate(bytes) {
        return Cow::Borrowed(bytes);
    }
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => in_string = !in_string,
            b'\\' if in_string => {
                if let Some(unit) = escape(bytes, i) {
                    let high = (0xD800..0xDC00).contains(&unit);
                    let low = (0xDC00..0xE000).contains(&unit);
                    if high
                        && escape(bytes, i + 6).is_some_and(|next| (0xDC00..0xE000).contains(&next))
                    {
                        i += 12;
                        continue;
                    }
                    if high || low {
                        out.get_or_insert_with(|| bytes.to_vec())[i..i + 6]
                            .copy_from_slice(b"\\ufffd");
                    }
                    i += 6;
                    continue;
                }
                // Any other escape: skip the escaped character.
                i += 2;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    match out {
        Some(v) => Cow::Owned(v),
        None => Cow::Borrowed(bytes),
    }
}

/// Finds `\u`; built once, as building it costs more than most searches.
static ESCAPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\\u"));

/// Whether the bytes hold something like a `\uD800`–`\uDFFF` escape (an
/// escaped backslash before `uD8…` counts too); a body without one needs
/// no closer reading.
fn may_hold_surrogate(bytes: &[u8]) -> bool {
    ESCAPE.find_iter(bytes).any(|at| {
        matches!(bytes.get(at + 2), Some(b'd' | b'D'))
            && matches!(
                bytes.get(at + 3),
                Some(b'8' | b'9' | b'a'..=b'f' | b'A'..=b'F')
            )
    })
}

/// The code unit of a `\uXXXX` escape starting at `at`.
fn escape(bytes: &[u8], at: usize) -> Option<u32> {
    let e = bytes.get(at..at + 6)?;
    if e[0] != b'\\' || e[1] != b'u' {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(&e[2..]).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_surrogates_read_as_replacement_characters_and_pairs_stay() {
        let body = br#"{"a":"x \ud800","b":"\udc00 y","c":"\ud83d\ude00","d":"\\ud800"}"#;
        let v = parse(body).unwrap().value;
        assert_eq!(v["a"], "x \u{fffd}");
        assert_eq!(v["b"], "\u{fffd} y");
        assert_eq!(v["c"], "\u{1f600}");
        assert_eq!(v["d"], "\\ud800", "an escaped backslash is no escape");
        assert!(matches!(
            without_lone_surrogates(br#"{"c":"\ud83d\ude00"}"#),
            Cow::Borrowed(_)
        ));
        let upper = parse(br#"{"a":"\uD83D x","b":"\uDFFF","c":"\u00e9\uCAFE\uE000"}"#)
            .unwrap()
            .value;
        assert_eq!(upper["a"], "\u{fffd} x");
        assert_eq!(upper["b"], "\u{fffd}");
        assert_eq!(upper["c"], "\u{e9}\u{cafe}\u{e000}");
        for plain in [
            &br#"{"c":"caf\u00e9 \uCAFE \ue000 \n"}"#[..],
            b"{}",
            b"\\u",
            b"\\ud",
        ] {
            assert!(
                matches!(without_lone_surrogates(plain), Cow::Borrowed(_)),
                "{plain:?} holds no surrogate escape"
            );
        }
    }

    #[test]
    fn too_deep_parts_are_replaced_and_named_the_rest_kept() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"metadata":{{"x":{deep},"y":2}}}}"#
        );
        let parsed = parse(body.as_bytes()).unwrap();
        assert_eq!(parsed.value["messages"][0]["content"], "hi");
        assert_eq!(parsed.value["metadata"]["y"], 2);
        assert_eq!(parsed.value["metadata"]["x"][0][0], TOO_DEEP);
        assert_eq!(parsed.omitted, ["metadata.x[0][0]"]);
    }

    #[test]
    fn what_is_not_json_stays_unread() {
        assert!(parse(b"{\"a\":").is_none());
    }
}
