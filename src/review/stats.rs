//! `GET /admin/api/stats`: the seed's dashboard figures, read from the
//! tallies the store maintains with every change (no scan).

use crate::config::TaxonomyConfig;
use crate::store::ConversationTallies;
use serde_json::{Value, json};

/// A share in 0..1, or `null` when there is nothing to divide by.
fn ratio(part: i64, whole: i64) -> Value {
    if whole > 0 {
        json!(part as f64 / whole as f64)
    } else {
        Value::Null
    }
}

pub fn stats(t: &ConversationTallies, taxonomy: &TaxonomyConfig) -> Value {
    let missing: Vec<&String> = taxonomy
        .threat_types
        .iter()
        .filter(|ty| t.approved_by_threat_type.get(*ty).copied().unwrap_or(0) <= 0)
        .collect();
    let total = taxonomy.threat_types.len();
    json!({
        "object": "stats",
        "conversations_total": t.conversations,
        "pending": t.pending,
        "approved": t.approved,
        "rejected": t.rejected,
        "high_quality": t.high_quality,
        "avg_quality_score": ratio(t.quality_sum, t.quality_count),
        "approval_rate": ratio(t.approved, t.approved + t.rejected),
        "mean_rating": ratio(t.rating_sum, t.rating_count),
        "ratings": t.rating_count,
        "feedback_share": ratio(t.with_feedback, t.conversations),
        "turns_total": t.turns,
        "background_tasks": t.background_tasks,
        "fine_tuned_traffic_share": ratio(t.fine_tuned_turns, t.turns),
        "taxonomy_coverage": {
            "covered": total - missing.len(),
            "total": total,
            "missing": missing,
        },
        "by_threat_type": t.by_threat_type,
        "by_severity": t.by_severity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_store_gives_nulls_never_nan() {
        let taxonomy = TaxonomyConfig {
            threat_types: vec!["malware".into(), "phishing".into()],
            severities: vec!["low".into()],
        };
        let s = stats(&ConversationTallies::default(), &taxonomy);
        assert_eq!(s["avg_quality_score"], Value::Null);
        assert_eq!(s["approval_rate"], Value::Null);
        assert_eq!(s["taxonomy_coverage"]["covered"], 0);
        assert_eq!(
            s["taxonomy_coverage"]["missing"],
            json!(["malware", "phishing"])
        );
        let mut t = ConversationTallies {
            approved: 3,
            rejected: 1,
            ..ConversationTallies::default()
        };
        t.approved_by_threat_type.insert("phishing".into(), 3);
        let s = stats(&t, &taxonomy);
        assert_eq!(s["approval_rate"], 0.75);
        assert_eq!(s["taxonomy_coverage"]["missing"], json!(["malware"]));
    }
}
