//! How the bulky records — inferences and conversations — are written:
//! JSON (self-describing, so records keep reading as fields are added),
//! compressed with zstd against a dictionary trained on triage exchanges
//! (`records.dict`, made by the `train_record_dictionary` test from the
//! bundled alerts), which turns the field names and the usual phrasing of
//! prompts and answers into a few bytes. A value starts with its format
//! byte, so records written before compression (plain JSON, `{`) still
//! read; a new dictionary gets a new format byte and the old one stays.
//!
//! Keys: an id of the form `prefix_<ULID>` is stored as its 16 bytes after
//! a tag byte, so keys are small, fixed-width and sort by creation time;
//! any other id (tests, clients' own conversation ids) as its bytes after
//! another tag. A third tag keys a group of records (`groups`).

use crate::store::{CapturedTurn, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::cell::RefCell;
use std::sync::LazyLock;
use zstd::bulk::{Compressor, Decompressor};
use zstd::dict::{DecoderDictionary, EncoderDictionary};

/// The dictionary records are compressed against (format [`ZSTD_DICT_1`]).
pub const DICTIONARY: &[u8] = include_bytes!("records.dict");

/// JSON compressed with zstd against [`DICTIONARY`]: `[2][raw length u32 LE][zstd frame]`.
const ZSTD_DICT_1: u8 = 2;
/// zstd's fastest level but for the negative ones: against the dictionary
/// it gives within a few per cent of level 3's size at less CPU.
const LEVEL: i32 = 1;
/// A record larger than this is refused as corrupt rather than allocated.
const MAX_RAW: usize = 64 << 20;

static ENCODER: LazyLock<EncoderDictionary<'static>> =
    LazyLock::new(|| EncoderDictionary::copy(DICTIONARY, LEVEL));
static DECODER: LazyLock<DecoderDictionary<'static>> =
    LazyLock::new(|| DecoderDictionary::copy(DICTIONARY));

/// The format byte and the raw length before a compressed record's frame.
const HEADER: usize = 5;
/// A JSON buffer grown past this by a large record is not kept.
const KEPT_BUFFER: usize = 1 << 20;

thread_local! {
    // A context per thread: preparing one costs far more than a record.
    // The JSON is written into a buffer kept with it.
    static ENCODING: RefCell<Option<(Compressor<'static>, Vec<u8>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
}

fn codec_error(detail: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("cannot encode record: {detail}"))
}

/// The record as stored: compressed JSON after its format byte.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    encode_written(|json| serde_json::to_writer(json, value))
}

/// [`encode`] of a captured turn's record.
pub fn encode_turn(turn: &CapturedTurn) -> Result<Vec<u8>, StoreError> {
    encode_written(|json| turn.write_record_json(json))
}

/// Compressed JSON after its format byte, of what `write` writes.
fn encode_written(
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>,
) -> Result<Vec<u8>, StoreError> {
    ENCODING.with(|cell| {
        let mut slot = cell.borrow_mut();
        let (compressor, json) = match slot.as_mut() {
            Some(e) => e,
            None => slot.insert((
                Compressor::with_prepared_dictionary(&ENCODER).map_err(codec_error)?,
                Vec::new(),
            )),
        };
        json.clear();
        write(json).map_err(codec_error)?;
        let mut out = Vec::with_capacity(HEADER + zstd::zstd_safe::compress_bound(json.len()));
        out.push(ZSTD_DICT_1);
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        let mut frame = std::io::Cursor::new(out);
        frame.set_position(HEADER as u64);
        compressor
            .compress_to_buffer(json.as_slice(), &mut frame)
            .map_err(codec_error)?;
        if json.capacity() > KEPT_BUFFER {
            *json = Vec::new();
        }
        Ok(frame.into_inner())
    })
}

/// Reads a record in any format this store has written.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt { what, detail };
    match bytes.first() {
        Some(&ZSTD_DICT_1) => {
            let (len, frame) = bytes[1..]
                .split_first_chunk::<4>()
                .ok_or_else(|| corrupt("truncated header".into()))?;
            let len = u32::from_le_bytes(*len) as usize;
            if len > MAX_RAW {
                return Err(corrupt(format!("claims {len} bytes")));
            }
            let json = DECOMPRESSOR.with(|cell| {
                let mut slot = cell.borrow_mut();
                let decompressor = match slot.as_mut() {
                    Some(d) => d,
                    None => slot.insert(
                        Decompressor::with_prepared_dictionary(&DECODER)
                            .map_err(|e| corrupt(e.to_string()))?,
                    ),
                };
                decompressor
                    .decompress(frame, len)
                    .map_err(|e| corrupt(e.to_string()))
            })?;
            serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))
        }
        // Written before records were compressed.
        Some(b'{') => serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string())),
        _ => Err(corrupt("unknown record format".into())),
    }
}

pub(super) const ULID_TAG: u8 = 1;
const RAW_TAG: u8 = 2;

/// The key of an id: `prefix_<ULID>` as its 16 bytes, anything else as is.
pub fn id_key(id: &str) -> Vec<u8> {
    match ulid_of(id) {
        Some(ulid) => ulid_key(ulid),
        None => [&[RAW_TAG], id.as_bytes()].concat(),
    }
}

/// The key of a ULID.
pub fn ulid_key(ulid: ulid::Ulid) -> Vec<u8> {
    let mut key = Vec::with_capacity(17);
    key.push(ULID_TAG);
    key.extend_from_slice(&ulid.0.to_be_bytes());
    key
}

/// The ULID of a `prefix_<ULID>` id.
pub fn ulid_of(id: &str) -> Option<ulid::Ulid> {
    let (_, tail) = id.split_once('_')?;
    (tail.len() == 26)
        .then(|| ulid::Ulid::from_string(tail).ok())
        .flatten()
}

/// The 16 bytes of a ULID key; `None` for a client-named id's key.
pub fn ulid_bytes(key: &[u8]) -> Option<[u8; 16]> {
    match key.split_first() {
        Some((&ULID_TAG, bytes)) => bytes.try_into().ok(),
        _ => None,
    }
}

/// Milliseconds since the epoch a ULID key was made at; 0 for other keys.
pub fn key_millis(key: &[u8]) -> u64 {
    ulid_bytes(key).map_or(0, |b| ulid::Ulid(u128::from_be_bytes(b)).timestamp_ms())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_round_trip_and_plain_json_still_reads() {
        let value = json!({"request": {"messages": [{"role": "user", "content": "Endpoint alert: mimikatz"}]}, "n": 3});
        let stored = encode(&value).unwrap();
        assert_eq!(stored[0], ZSTD_DICT_1);
        assert_eq!(decode::<serde_json::Value>("t", &stored).unwrap(), value);
        let plain = serde_json::to_vec(&value).unwrap();
        assert_eq!(decode::<serde_json::Value>("t", &plain).unwrap(), value);
        assert!(matches!(
            decode::<serde_json::Value>("t", &[9, 9]),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            decode::<serde_json::Value>("t", &[2, 255, 255, 255, 255, 0]),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn ulid_ids_become_sixteen_bytes_that_sort_by_time() {
        let a = crate::ids::new_id("inf");
        let b = crate::ids::new_id("inf");
        let (ka, kb) = (id_key(&a), id_key(&b));
        assert_eq!(ka.len(), 17);
        assert!(ka < kb);
        assert_eq!(&ka[1..], &ulid_of(&a).unwrap().0.to_be_bytes());
        assert!(key_millis(&ka) > 1_700_000_000_000);
        assert_eq!(key_millis(&id_key("ticket-42")), 0);
    }

    const DICTIONARY_SHA256: &str =
        "157809b41471f5a1b783f8647b3a808a926e7c8819bf08716e549556314aa647";

    /// Records written in format 2 decompress only with this dictionary.
    #[test]
    fn the_dictionary_of_format_2_never_changes() {
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(DICTIONARY)),
            DICTIONARY_SHA256,
            "records.dict changed: stored records could no longer be read; give a new dictionary a new format byte"
        );
    }

    /// Rebuilds `records.dict` from records shaped like capture's, made
    /// from the bundled alerts: `cargo test --lib train_record_dictionary
    /// -- --ignored`. A new dictionary needs a new format byte.
    #[test]
    #[ignore = "writes src/store/sled_store/records.dict"]
    fn train_record_dictionary() {
        use crate::store::{ConversationRecord, InferenceRecord};
        let alerts = include_str!("../../demo/alerts.jsonl");
        let mut samples: Vec<Vec<u8>> = Vec::new();
        for (n, line) in alerts.lines().enumerate() {
            let alert: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = alert["alert"].as_str().unwrap();
            let (threat, severity) = (
                alert["threat_type"].as_str().unwrap(),
                alert["severity"].as_str().unwrap(),
            );
            let answer = if n % 3 == 0 {
                json!({"threat_type": threat, "severity": severity, "rationale": alert["title"]})
                    .to_string()
            } else {
                format!(
                    "Threat type: {threat}\nSeverity: {severity}\nRationale: {}",
                    alert["title"].as_str().unwrap()
                )
            };
            // Fixed ids, so the dictionary is the same every time it is made.
            let ulid = |salt: u128| {
                ulid::Ulid::from_parts(1_764_800_000_000 + n as u64, salt * 7_919 + n as u128)
            };
            let id = format!("inf_{}", ulid(1));
            let conversation = format!("conv_{}", ulid(2));
            let mut record = InferenceRecord::bare(&id, &conversation);
            record.completion_id = Some(format!("chatcmpl-{}", &id[4..]));
            record.alias = Some("triage".into());
            record.version = Some("base".into());
            record.provider_model = "gpt-4o-mini".into();
            record.request = json!({"messages": [
                {"role": "system", "content": "You are a SOC analyst. Classify the alert: give the threat type, the severity and a short rationale."},
                {"role": "user", "content": text}], "params": {"temperature": 0}});
            record.response = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": answer,
                "refusal": null}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 120, "completion_tokens": 40,
                "total_tokens": 160, "prompt_tokens_details": {"cached_tokens": 0}}, "error": null});
            record.streamed = n % 2 == 0;
            record.first_byte_ms = Some(42.5);
            record.turn = Some(0);
            record.sticky = Some(format!("key:key_{}", &id[4..]));
            samples.push(serde_json::to_vec(&record).unwrap());
            let c = ConversationRecord {
                id: conversation,
                inference_ids: vec![id],
                parent_id: None,
                created_at: "2026-12-04T10:00:00Z".into(),
                updated_at: "2026-12-04T10:00:00Z".into(),
                alias: Some("triage".into()),
                versions: vec!["base".into()],
                user: None,
                preview: text.chars().take(280).collect(),
                fine_tuned_turns: 0,
                review: Default::default(),
                signals: Default::default(),
                position: Some(crate::store::Position(1 << 50, n as u32)),
            };
            samples.push(serde_json::to_vec(&c).unwrap());
        }
        let dictionary = zstd::dict::from_samples(&samples, 16 * 1024).unwrap();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/store/sled_store/records.dict"
        );
        std::fs::write(path, dictionary).unwrap();
    }
}
