//! The two severity figures the seed's success targets name.

use super::{Labelled, ratio};

const CRITICAL: &str = "critical";

fn high_or_critical(severity: &str) -> bool {
    matches!(severity, "high" | CRITICAL)
}

/// Of the examples predicted high or critical, the share labelled high or
/// critical: how often a raised alarm deserved it.
pub fn precision_high_severity(examples: &[Labelled]) -> Option<f64> {
    let raised: Vec<_> = examples
        .iter()
        .filter(|e| e.predicted.is_some_and(high_or_critical))
        .collect();
    let deserved = raised
        .iter()
        .filter(|e| high_or_critical(e.expected))
        .count();
    ratio(deserved as u64, raised.len() as u64)
}

/// Of the examples labelled critical, the share predicted critical; a
/// missing prediction counts as a miss.
pub fn recall_critical(examples: &[Labelled]) -> Option<f64> {
    let critical: Vec<_> = examples.iter().filter(|e| e.expected == CRITICAL).collect();
    let caught = critical
        .iter()
        .filter(|e| e.predicted == Some(CRITICAL))
        .count();
    ratio(caught as u64, critical.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(expected: &'static str, predicted: Option<&'static str>) -> Labelled<'static> {
        Labelled {
            expected,
            predicted,
        }
    }

    #[test]
    fn severity_figures_worked_by_hand() {
        let examples = [
            ex("critical", Some("critical")), // raised, deserved, caught
            ex("critical", Some("high")),     // raised, deserved, missed
            ex("critical", None),             // missed
            ex("high", Some("critical")),     // raised, deserved
            ex("low", Some("high")),          // raised, not deserved
            ex("medium", Some("medium")),
        ];
        // Raised 4, of which 3 deserved; 3 critical, of which 1 caught.
        assert_eq!(precision_high_severity(&examples), Some(0.75));
        assert_eq!(recall_critical(&examples), Some(1.0 / 3.0));
    }

    #[test]
    fn empty_denominators_give_none() {
        let calm = [ex("low", Some("low")), ex("high", None)];
        assert_eq!(precision_high_severity(&calm), None);
        assert_eq!(recall_critical(&calm), None);
        assert_eq!(precision_high_severity(&[]), None);
    }
}
