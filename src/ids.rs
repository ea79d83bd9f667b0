//! Time-ordered ids with a kind prefix (`inf_01J…`), RFC 3339 timestamps
//! and Unix milliseconds.

use std::sync::Mutex;
use std::time::SystemTime;

/// A new ULID-based id such as `key_01JD…`. Ids sort by creation order,
/// even within one millisecond: listings and cursors rely on that.
pub fn new_id(prefix: &str) -> String {
    static GENERATOR: Mutex<Option<ulid::Generator>> = Mutex::new(None);
    let next = GENERATOR
        .lock()
        .ok()
        .and_then(|mut g| g.get_or_insert_with(ulid::Generator::new).generate().ok());
    // Only 2^80 ids in one millisecond overflow the generator; a random
    // ULID is then still unique.
    let id = next.unwrap_or_else(|| ulid::Ulid::from_datetime(SystemTime::now()));
    // Two per chat completion: written without `format!`, which showed in
    // the request path's profile.
    let mut text = [0u8; ulid::ULID_LEN];
    let mut out = String::with_capacity(prefix.len() + 1 + ulid::ULID_LEN);
    out.push_str(prefix);
    out.push('_');
    out.push_str(id.array_to_str(&mut text));
    out
}

/// Now as RFC 3339 UTC with seconds, e.g. `2026-11-25T03:00:00Z`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// `t` in milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_carry_their_prefix_and_sort_by_creation_even_within_a_millisecond() {
        let ids: Vec<String> = (0..1000).map(|_| super::new_id("key")).collect();
        assert!(
            ids[0].starts_with("key_") && ids[0].len() == 30,
            "{}",
            ids[0]
        );
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}
