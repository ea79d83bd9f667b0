//! What a dataset is built from (`POST /datasets`'s body) and its checks,
//! each naming the field that is wrong.

use super::DatasetError;
use crate::config::Config;
use crate::curation::DatasetFormat;
use crate::review::normalise_time;
use crate::store::ReviewStatus;
use serde::{Deserialize, Serialize};

/// Longest dataset name kept.
const MAX_NAME: usize = 200;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetRequest {
    /// Checked by [`DatasetRequest::validate`], so a missing name is
    /// reported like an empty one.
    #[serde(default)]
    pub name: String,
    pub format: DatasetFormat,
    #[serde(default)]
    pub filter: DatasetFilter,
    /// The share for validation, in (0, 1); `fine_tuning.validation_split`
    /// when absent.
    pub validation_split: Option<f64>,
    /// Whose tokenizer and token limit the examples are checked with; the
    /// alias's production model when absent.
    pub base_model: Option<String>,
}

/// Which conversations become candidates. Stored with the snapshot as
/// checked (status filled in, times normalised).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetFilter {
    /// `approved` when absent.
    pub status: Option<ReviewStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_quality: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threat_types: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severities: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Created at or after (RFC 3339 or YYYY-MM-DD).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Created before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    // The quality signals, as `GET /conversations` filters on them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub complete: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_labels: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_rating: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_error: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_answer_chars: Option<u32>,
    /// Chat apps' housekeeping requests only; left out unless `true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub background_task: Option<bool>,
}

fn invalid(message: String, param: &str) -> DatasetError {
    DatasetError::Invalid {
        message,
        param: param.to_string(),
    }
}

impl DatasetRequest {
    /// Checks every value and returns the filter as it will be applied.
    pub fn validate(&self, config: &Config) -> Result<DatasetFilter, DatasetError> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME {
            return Err(invalid(
                format!("`name` must have 1 to {MAX_NAME} characters"),
                "name",
            ));
        }
        if let Some(s) = self.validation_split
            && !(s > 0.0 && s < 1.0)
        {
            return Err(invalid(
                format!("`validation_split` must be between 0 and 1 (exclusive), got {s}"),
                "validation_split",
            ));
        }
        if self
            .base_model
            .as_deref()
            .is_some_and(|m| m.trim().is_empty())
        {
            return Err(invalid(
                "`base_model` must not be empty".into(),
                "base_model",
            ));
        }
        self.filter.checked(config)
    }
}

impl DatasetFilter {
    fn checked(&self, config: &Config) -> Result<DatasetFilter, DatasetError> {
        let mut out = self.clone();
        out.status = Some(self.status.unwrap_or(ReviewStatus::Approved));
        if let Some(q) = self.min_quality
            && !(1..=5).contains(&q)
        {
            return Err(invalid(
                "`filter.min_quality` must be 1 to 5".into(),
                "filter.min_quality",
            ));
        }
        let taxonomy = &config.taxonomy;
        in_taxonomy("threat_types", &self.threat_types, &taxonomy.threat_types)?;
        in_taxonomy("severities", &self.severities, &taxonomy.severities)?;
        out.since = time("since", self.since.as_deref())?;
        out.until = time("until", self.until.as_deref())?;
        if let (Some(since), Some(until)) = (&out.since, &out.until)
            && since >= until
        {
            return Err(invalid(
                "`filter.since` must be before `filter.until`".into(),
                "filter.since",
            ));
        }
        Ok(out)
    }
}

/// Every value must be in the taxonomy; an empty list would match nothing.
fn in_taxonomy(
    name: &str,
    values: &Option<Vec<String>>,
    allowed: &[String],
) -> Result<(), DatasetError> {
    let Some(values) = values else {
        return Ok(());
    };
    let param = format!("filter.{name}");
    if values.is_empty() {
        return Err(invalid(
            format!("`{param}` must name at least one value, or be left out"),
            &param,
        ));
    }
    match values.iter().find(|v| !allowed.contains(v)) {
        Some(v) => Err(invalid(
            format!(
                "`{param}` names `{v}`, which is not in the taxonomy ({})",
                allowed.join(", ")
            ),
            &param,
        )),
        None => Ok(()),
    }
}

fn time(name: &str, value: Option<&str>) -> Result<Option<String>, DatasetError> {
    let Some(v) = value else {
        return Ok(None);
    };
    let param = format!("filter.{name}");
    normalise_time(v).map(Some).ok_or_else(|| {
        invalid(
            format!("`{param}` must be an RFC 3339 time or a date (YYYY-MM-DD), got `{v}`"),
            &param,
        )
    })
}
