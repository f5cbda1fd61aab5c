//! Set of dispatch sequence numbers stored as sorted, disjoint, non-adjacent inclusive
//! ranges: in-order arrival (the normal case) costs O(1) and the report is compact.

/// Sorted inclusive ranges `[a, b]`, no two overlapping or touching.
#[derive(Debug, Default)]
pub struct SeqSet {
    ranges: Vec<[u64; 2]>,
}

impl SeqSet {
    /// Insert `seq`; returns `false` if it was already present.
    pub fn insert(&mut self, seq: u64) -> bool {
        // Index of the first range starting after `seq`.
        let i = self.ranges.partition_point(|r| r[0] <= seq);
        if i > 0 && self.ranges[i - 1][1] >= seq {
            return false;
        }
        // No overflow: a left neighbour ends below `seq`, a right one starts above it.
        let joins_left = i > 0 && self.ranges[i - 1][1] + 1 == seq;
        let joins_right = i < self.ranges.len() && self.ranges[i][0] - 1 == seq;
        match (joins_left, joins_right) {
            (true, true) => {
                self.ranges[i - 1][1] = self.ranges[i][1];
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i - 1][1] = seq,
            (false, true) => self.ranges[i][0] = seq,
            (false, false) => self.ranges.insert(i, [seq, seq]),
        }
        true
    }

    /// The ranges, ascending.
    pub fn ranges(&self) -> &[[u64; 2]] {
        &self.ranges
    }
}

#[cfg(test)]
mod tests {
    use super::SeqSet;

    #[test]
    fn merges_and_detects_duplicates() {
        let mut set = SeqSet::default();
        for seq in [1, 2, 3, 7, 5, 6] {
            assert!(set.insert(seq));
        }
        assert_eq!(set.ranges(), [[1, 3], [5, 7]]);
        assert!(!set.insert(6));
        assert!(set.insert(4));
        assert_eq!(set.ranges(), [[1, 7]]);
        assert!(set.insert(0));
        assert!(set.insert(10));
        assert_eq!(set.ranges(), [[0, 7], [10, 10]]);
        assert!(!set.insert(10));
    }
}
