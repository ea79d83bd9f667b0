//! Consistent bucketing for traffic splits. An alias's traffic is cut into
//! [`SLOTS`] slots, each owned by one version; a sticky key (conversation,
//! user or API key) hashes to a slot and so to a version. The table is
//! stored: when the weights change, a version that loses share gives up
//! just the slots it must and a version that gains takes just those, so a
//! weight change moves exactly as many sticky keys as the change itself
//! requires and no others.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Slots per alias: weights have a resolution of 0.01 percentage points.
pub const SLOTS: usize = 10_000;

/// The slot a sticky key falls into for this alias. xxh3 is a fixed,
/// documented algorithm, so assignments survive restarts and upgrades.
pub fn slot(alias: &str, sticky: &str) -> usize {
    let h = xxh3_64_with_seed(sticky.as_bytes(), xxh3_64_with_seed(alias.as_bytes(), 0));
    (h % SLOTS as u64) as usize
}

/// A percentage (0–100, at most two decimals) as a number of slots;
/// `None` when it is out of range or finer than a slot.
pub fn weight_to_slots(percent: f64) -> Option<u32> {
    if !(0.0..=100.0).contains(&percent) {
        return None;
    }
    let slots = percent * (SLOTS as f64 / 100.0);
    let rounded = slots.round();
    ((slots - rounded).abs() < 1e-6).then_some(rounded as u32)
}

pub fn slots_to_weight(slots: u32) -> f64 {
    f64::from(slots) * 100.0 / SLOTS as f64
}

/// Every slot owned by `owner`.
pub fn all_to(owner: u8) -> Vec<u8> {
    vec![owner; SLOTS]
}

/// The table after the versions' slot counts become `target` (one per
/// version, index = owner byte, summing to [`SLOTS`]). A version over its
/// target releases its slots ranked highest by a hash of (its name, slot);
/// a version under it takes the released slots ranked highest by a hash of
/// (its name, slot). Which slots move is deterministic and spread evenly.
pub fn rebalance(current: &[u8], target: &[u32], names: &[&str]) -> Vec<u8> {
    let mut table = current.to_vec();
    table.resize(SLOTS, 0);
    let mut counts = vec![0u32; target.len()];
    for &owner in &table {
        if let Some(c) = counts.get_mut(owner as usize) {
            *c += 1;
        }
    }
    let mut pool: Vec<usize> = Vec::new();
    for (owner, (&have, &want)) in counts.iter().zip(target).enumerate() {
        if have > want {
            let mine = table
                .iter()
                .enumerate()
                .filter(|(_, o)| **o as usize == owner);
            let mine: Vec<usize> = mine.map(|(s, _)| s).collect();
            pool.extend(
                ranked(mine, names[owner])
                    .into_iter()
                    .take((have - want) as usize),
            );
        }
    }
    // Slots owned by an index past the versions (a corrupt table) are free too.
    pool.extend(
        table
            .iter()
            .enumerate()
            .filter(|(_, o)| **o as usize >= target.len())
            .map(|(s, _)| s),
    );
    for (owner, (&have, &want)) in counts.iter().zip(target).enumerate() {
        if have < want {
            let taken: Vec<usize> = ranked(std::mem::take(&mut pool), names[owner]);
            let (mine, rest) = taken.split_at(((want - have) as usize).min(taken.len()));
            for &s in mine {
                table[s] = owner as u8;
            }
            pool = rest.to_vec();
        }
    }
    table
}

/// Slots ordered by a hash of (name, slot), highest first.
fn ranked(mut slots: Vec<usize>, name: &str) -> Vec<usize> {
    let seed = xxh3_64_with_seed(name.as_bytes(), 1);
    slots.sort_by_key(|&s| std::cmp::Reverse(xxh3_64_with_seed(&s.to_le_bytes(), seed)));
    slots
}

/// Slots per owner.
pub fn counts(table: &[u8], owners: usize) -> Vec<u32> {
    let mut counts = vec![0u32; owners];
    for &o in table {
        if let Some(c) = counts.get_mut(o as usize) {
            *c += 1;
        }
    }
    counts
}

pub fn encode(table: &[u8]) -> String {
    hex::encode(table)
}

/// The stored table, or `None` if it is not one.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok().filter(|t| t.len() == SLOTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(a: &[u8], b: &[u8]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn a_weight_change_moves_exactly_the_slots_it_must() {
        let names = ["base", "ft1", "ft2"];
        let start = all_to(0);
        let t1 = rebalance(&start, &[9000, 1000, 0], &names);
        assert_eq!(counts(&t1, 3), [9000, 1000, 0]);
        assert_eq!(moved(&start, &t1), 1000);
        // 10% more to ft1 from base only: 1,000 slots move, none of ft1's old ones.
        let t2 = rebalance(&t1, &[8000, 2000, 0], &names);
        assert_eq!(moved(&t1, &t2), 1000);
        assert!((0..SLOTS).all(|s| t1[s] != 1 || t2[s] == 1));
        // Three ways: base gives 5%, ft1 gives 5%, ft2 takes 10%.
        let t3 = rebalance(&t2, &[7500, 1500, 1000], &names);
        assert_eq!(counts(&t3, 3), [7500, 1500, 1000]);
        assert_eq!(moved(&t2, &t3), 1000);
        assert!((0..SLOTS).all(|s| t3[s] == t2[s] || t3[s] == 2));
    }

    #[test]
    fn the_same_change_gives_the_same_table() {
        let names = ["a", "b"];
        let x = rebalance(&all_to(0), &[5000, 5000], &names);
        let y = rebalance(&all_to(0), &[5000, 5000], &names);
        assert_eq!(x, y);
        assert_eq!(decode(&encode(&x)), Some(x));
        assert_eq!(decode("00"), None);
    }

    #[test]
    fn keys_spread_evenly_over_the_slots() {
        let table = rebalance(&all_to(0), &[7000, 3000], &["a", "b"]);
        let n = 10_000;
        let to_b = (0..n)
            .filter(|i| table[slot("triage", &format!("conv_{i}"))] == 1)
            .count();
        let share = to_b as f64 / n as f64;
        assert!((share - 0.30).abs() < 0.02, "{share}");
        assert_eq!(slot("triage", "k"), slot("triage", "k"));
        assert_ne!(slot("triage", "k"), slot("other", "k"));
    }

    #[test]
    fn weights_convert_to_whole_slots_only() {
        assert_eq!(weight_to_slots(12.5), Some(1250));
        assert_eq!(weight_to_slots(0.01), Some(1));
        assert_eq!(weight_to_slots(0.001), None);
        assert_eq!(weight_to_slots(100.5), None);
        assert_eq!(weight_to_slots(-1.0), None);
        assert_eq!(slots_to_weight(1250), 12.5);
    }
}
