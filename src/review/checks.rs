//! Checks shared by feedback and review edits, each naming its field.

use crate::config::TaxonomyConfig;
use crate::openai::ApiError;

pub const MAX_NOTES: usize = 4_000;
pub const MAX_CORRECTION: usize = 16_000;

/// Ratings and quality scores are 1 to 5.
pub fn check_score(name: &str, value: Option<u8>) -> Result<(), ApiError> {
    match value {
        Some(v) if !(1..=5).contains(&v) => Err(ApiError::invalid(
            format!("`{name}` must be 1 to 5"),
            Some(name),
        )),
        _ => Ok(()),
    }
}

/// `threat_type` and `severity` must come from the configured taxonomy.
pub fn check_taxonomy(
    taxonomy: &TaxonomyConfig,
    name: &str,
    value: Option<&str>,
) -> Result<(), ApiError> {
    let allowed = match name {
        "severity" => &taxonomy.severities,
        _ => &taxonomy.threat_types,
    };
    match value {
        Some(v) if !allowed.iter().any(|a| a == v) => Err(ApiError::invalid(
            format!(
                "`{name}` `{v}` is not in the taxonomy ({})",
                allowed.join(", ")
            ),
            Some(name),
        )),
        _ => Ok(()),
    }
}

/// Free text up to `max` characters.
pub fn check_text(name: &str, value: Option<&str>, max: usize) -> Result<(), ApiError> {
    match value {
        Some(v) if v.chars().count() > max => Err(ApiError::invalid(
            format!("`{name}` is longer than {max} characters"),
            Some(name),
        )),
        _ => Ok(()),
    }
}
