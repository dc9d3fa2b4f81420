//! Positions in the replication stream, and the rule that makes at-least-once transport
//! deliver exactly once: a receiver remembers the last position it delivered (its
//! [`Watermark`]) and drops anything at or below it.
//!
//! - [`Lsn`]: a WAL position (`16/B374D848` in Postgres's notation).
//! - [`StreamPosition`]: an item's place in one stream: the end LSN of its transaction and its
//!   place in that transaction. The stream names the database and slot, so a new database (same
//!   LSNs, other contents) always counts as new.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A position in the write-ahead log. On the wire it is a plain number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    /// Postgres's notation: the high and low 32 bits in hex, `16/B374D848`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;

    /// Parses Postgres's notation (`pg_lsn` as text).
    fn from_str(text: &str) -> Result<Lsn, String> {
        let bad = || format!("{text:?} is not an LSN (expected e.g. 16/B374D848)");
        let (high, low) = text.split_once('/').ok_or_else(bad)?;
        let high = u32::from_str_radix(high, 16).map_err(|_| bad())?;
        let low = u32::from_str_radix(low, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

/// The place of a row change or database broadcast in a stream (`{system_identifier}:{slot}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    pub stream: String,
    /// The end LSN of the item's transaction.
    pub lsn: Lsn,
    /// The item's place in its transaction.
    pub seq: u32,
}

/// The last item a receiver (a hub, a Channel) delivered from the stream, and the decision
/// whether the next one is new.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watermark {
    last: Option<StreamPosition>,
}

impl Watermark {
    /// Starts from what the receiver stored (nothing: everything is new).
    pub fn new(last: Option<StreamPosition>) -> Watermark {
        Watermark { last }
    }

    /// Whether `(lsn, seq)` of `stream` is new here; if so, it becomes the last delivered. An
    /// item of another stream (another database or slot) is always new.
    pub fn admit(&mut self, stream: &str, lsn: Lsn, seq: u32) -> bool {
        let new = match &self.last {
            None => true,
            Some(last) => last.stream != stream || (lsn, seq) > (last.lsn, last.seq),
        };
        if new {
            self.last = Some(StreamPosition {
                stream: stream.to_string(),
                lsn,
                seq,
            });
        }
        new
    }

    /// The last item admitted (what to store).
    pub fn last(&self) -> Option<&StreamPosition> {
        self.last.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(lsn: u64, seq: u32) -> Watermark {
        Watermark::new(Some(StreamPosition {
            stream: "1:s".into(),
            lsn: Lsn(lsn),
            seq,
        }))
    }

    #[test]
    fn lsn_reads_and_prints_postgres_notation() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn, Lsn(0x16_B374_D848));
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
        assert_eq!(serde_json::to_string(&Lsn(7)).unwrap(), "7");
    }

    #[test]
    fn a_fresh_receiver_admits_anything() {
        let mut mark = Watermark::default();
        assert!(mark.admit("1:s", Lsn(5), 0));
        assert_eq!(mark.last().unwrap().lsn, Lsn(5));
    }

    #[test]
    fn at_or_below_the_mark_is_a_duplicate() {
        let mut mark = at(100, 2);
        assert!(!mark.admit("1:s", Lsn(100), 2), "the same item again");
        assert!(!mark.admit("1:s", Lsn(100), 1));
        assert!(!mark.admit("1:s", Lsn(99), 9));
        assert_eq!(mark, at(100, 2), "a duplicate does not move the mark");
        assert!(mark.admit("1:s", Lsn(100), 3));
        assert!(mark.admit("1:s", Lsn(101), 0));
        assert_eq!(mark, at(101, 0));
    }

    #[test]
    fn another_stream_starts_afresh() {
        let mut mark = at(100, 2);
        assert!(mark.admit("2:s", Lsn(5), 0), "a new database has lower LSNs");
        assert!(!mark.admit("2:s", Lsn(5), 0));
    }

    #[test]
    fn a_replayed_batch_delivers_only_its_new_tail() {
        let mut mark = at(200, 1);
        let batch = [(200, 0), (200, 1), (200, 2), (300, 0)];
        let new: Vec<_> = batch
            .into_iter()
            .filter(|&(lsn, seq)| mark.admit("1:s", Lsn(lsn), seq))
            .collect();
        assert_eq!(new, [(200, 2), (300, 0)]);
    }
}
