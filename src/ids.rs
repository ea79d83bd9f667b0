//! Time-ordered ids with a kind prefix (`inf_01J…`) and RFC 3339 timestamps.

use std::time::SystemTime;

/// A new ULID-based id such as `key_01JD…`: sorts by creation time.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ulid::Ulid::new())
}

/// Now as RFC 3339 UTC with seconds, e.g. `2026-11-25T03:00:00Z`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_carry_their_prefix_and_sort_by_time() {
        let a = super::new_id("key");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::new_id("key");
        assert!(a.starts_with("key_") && a.len() == 30, "{a}");
        assert!(a < b);
    }
}
