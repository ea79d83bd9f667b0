//! Train/validation split, stratified by threat type: each class gives the
//! validation set its share, and which members go is decided by a hash of
//! each example, so the same examples always split the same way.

use std::collections::BTreeMap;

/// Indices into the items given, each side ordered by the items' keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Split {
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
}

/// Splits `items` — each its class (threat type; unlabelled is a class of
/// its own) and a key that orders it (a hash of the example) — so that
/// about `fraction` of them validate: every class `floor(n × fraction)`,
/// then one more to the classes with the largest remainders until the
/// rounded total is reached. A class always keeps one example in train.
pub fn stratified_split(items: &[(Option<&str>, &str)], fraction: f64) -> Split {
    let classes = classes(items);
    let quotas = quotas(&classes, items.len(), fraction);
    let mut split = Split::default();
    for (members, quota) in classes.values().zip(quotas) {
        let (validation, train) = members.split_at(quota.min(members.len()));
        split.validation.extend(validation);
        split.train.extend(train);
    }
    let key = |i: &usize| items.get(*i).map(|(_, key)| *key);
    split.train.sort_by_key(key);
    split.validation.sort_by_key(key);
    split
}

/// Each class's members in key order.
fn classes<'a>(items: &[(Option<&'a str>, &str)]) -> BTreeMap<Option<&'a str>, Vec<usize>> {
    let mut classes: BTreeMap<Option<&str>, Vec<usize>> = BTreeMap::new();
    for (i, (class, _)) in items.iter().enumerate() {
        classes.entry(*class).or_default().push(i);
    }
    for members in classes.values_mut() {
        members.sort_by_key(|i| items.get(*i).map(|(_, key)| *key));
    }
    classes
}

/// How many of each class validate (largest-remainder rounding).
fn quotas(classes: &BTreeMap<Option<&str>, Vec<usize>>, total: usize, fraction: f64) -> Vec<usize> {
    // A fraction from a request may be anything; a class keeps one in train.
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let share = |n: usize| n as f64 * fraction;
    let mut quotas: Vec<usize> = classes
        .values()
        .map(|m| (share(m.len()).floor() as usize).min(m.len().saturating_sub(1)))
        .collect();
    let wanted = share(total).round() as usize;
    let mut by_remainder: Vec<(usize, f64)> = classes
        .values()
        .enumerate()
        .map(|(i, m)| (i, share(m.len()) - share(m.len()).floor()))
        .collect();
    // Largest remainder first; the classes' own order breaks ties.
    by_remainder.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let sizes: Vec<usize> = classes.values().map(Vec::len).collect();
    for (i, _) in by_remainder {
        if quotas.iter().sum::<usize>() >= wanted {
            break;
        }
        if let (Some(q), Some(n)) = (quotas.get_mut(i), sizes.get(i))
            && *q + 1 < *n
        {
            *q += 1;
        }
    }
    quotas
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` items of each class, keyed `class-i`.
    fn items(classes: &[(&'static str, usize)]) -> Vec<(Option<&'static str>, String)> {
        classes
            .iter()
            .flat_map(|(c, n)| (0..*n).map(move |i| (Some(*c), format!("{c}-{i:03}"))))
            .collect()
    }

    fn split_of(
        items: &[(Option<&'static str>, String)],
        fraction: f64,
    ) -> (Vec<String>, Vec<String>) {
        let refs: Vec<(Option<&str>, &str)> = items.iter().map(|(c, k)| (*c, k.as_str())).collect();
        let s = stratified_split(&refs, fraction);
        let keys = |ix: &[usize]| ix.iter().map(|i| items[*i].1.clone()).collect::<Vec<_>>();
        (keys(&s.train), keys(&s.validation))
    }

    fn count(keys: &[String], class: &str) -> usize {
        keys.iter()
            .filter(|k| k.starts_with(&format!("{class}-")))
            .count()
    }

    #[test]
    fn each_class_splits_in_proportion() {
        let all = items(&[("malware", 50), ("phishing", 20), ("benign", 10)]);
        let (train, validation) = split_of(&all, 0.2);
        assert_eq!(validation.len(), 16);
        assert_eq!(train.len(), 64);
        assert_eq!(count(&validation, "malware"), 10);
        assert_eq!(count(&validation, "phishing"), 4);
        assert_eq!(count(&validation, "benign"), 2);
    }

    #[test]
    fn remainders_reach_the_rounded_total_and_single_examples_stay_in_train() {
        let all = items(&[("a", 3), ("b", 3), ("c", 3), ("d", 1), ("e", 1)]);
        let (train, validation) = split_of(&all, 0.25);
        // 11 × 0.25 = 2.75 → 3: one each from the classes of three (0.75 left over each).
        assert_eq!(validation.len(), 3);
        for class in ["a", "b", "c"] {
            assert_eq!(count(&validation, class), 1, "{class}");
        }
        assert_eq!(count(&train, "d") + count(&train, "e"), 2);
    }

    #[test]
    fn the_same_examples_split_the_same_way_in_any_order() {
        let all = items(&[("malware", 17), ("phishing", 9)]);
        let mut shuffled = all.clone();
        shuffled.reverse();
        shuffled.swap(0, 7);
        let a = split_of(&all, 0.3);
        let b = split_of(&shuffled, 0.3);
        assert_eq!(a, b);
        // Each side comes out ordered by key.
        assert!(a.0.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn fractions_out_of_range_still_leave_every_class_in_train() {
        let all = items(&[("malware", 4), ("benign", 1)]);
        let (train, validation) = split_of(&all, 1.5);
        assert_eq!(
            (count(&train, "malware"), count(&validation, "malware")),
            (1, 3)
        );
        assert_eq!(count(&train, "benign"), 1);
        assert_eq!(split_of(&all, f64::NAN).1.len(), 0);
        assert_eq!(split_of(&all, -1.0).1.len(), 0);
    }

    #[test]
    fn no_fraction_means_no_validation() {
        let all = items(&[("malware", 5)]);
        let (train, validation) = split_of(&all, 0.0);
        assert_eq!((train.len(), validation.len()), (5, 0));
        assert_eq!(split_of(&[], 0.2), (vec![], vec![]));
    }
}
