//! Stream entry ids, as Redis answers them.

use super::resp::parse_u64;

/// A stream entry id, `ms-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct EntryId {
    pub(crate) ms: u64,
    pub(crate) seq: u64,
}

impl EntryId {
    #[allow(dead_code)] // for the consumer groups' poll, next
    pub(crate) const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

    /// `ms-seq`, both decimal (what Redis answers; `None` for anything else).
    pub(crate) fn parse(raw: &[u8]) -> Option<EntryId> {
        let dash = raw.iter().position(|&byte| byte == b'-')?;
        Some(EntryId {
            ms: parse_u64(&raw[..dash])?,
            seq: parse_u64(&raw[dash + 1..])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64, seq: u64) -> EntryId {
        EntryId { ms, seq }
    }

    #[test]
    fn entry_ids_parse_and_order() {
        assert_eq!(
            EntryId::parse(b"1700000000000-12"),
            Some(id(1_700_000_000_000, 12))
        );
        assert_eq!(EntryId::parse(b"0-0"), Some(EntryId::ZERO));
        for bad in [
            &b""[..],
            b"12",
            b"-1",
            b"1-",
            b"1-2-3",
            b"a-1",
            b"1--1",
            b"99999999999999999999999-1",
        ] {
            assert_eq!(
                EntryId::parse(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(id(1, 9) < id(2, 0) && id(2, 0) < id(2, 1));
    }
}
