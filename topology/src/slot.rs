use std::fmt;

use serde::{Deserialize, Serialize};

/// The number of slots. Fixed forever: changing it would move every key.
pub const SLOT_COUNT: u16 = 1024;

/// A slot: `xxh3_64(routing key bytes) % 1024`, the unit of ownership and of movement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct Slot(u16);

impl Slot {
    /// The slot of a routing key (a uid, or the bytes an id was minted for).
    pub fn of(key: &[u8]) -> Slot {
        Slot((xxhash_rust::xxh3::xxh3_64(key) % u64::from(SLOT_COUNT)) as u16)
    }

    /// A slot from its number; `None` past 1023.
    pub fn new(n: u16) -> Option<Slot> {
        (n < SLOT_COUNT).then_some(Slot(n))
    }

    pub fn get(self) -> u16 {
        self.0
    }

    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// Every slot, in order.
    pub fn all() -> impl Iterator<Item = Slot> {
        (0..SLOT_COUNT).map(Slot)
    }
}

impl TryFrom<u16> for Slot {
    type Error = String;
    fn try_from(n: u16) -> Result<Self, Self::Error> {
        Slot::new(n).ok_or_else(|| format!("slot {n} is out of range 0..{SLOT_COUNT}"))
    }
}

impl From<Slot> for u16 {
    fn from(s: Slot) -> u16 {
        s.0
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_stable_and_in_range() {
        // Pinned values: the hash must never change, or every user would move.
        assert_eq!(Slot::of(b"u42"), Slot::of(b"u42"));
        for key in ["", "a", "u42", "新年快乐"] {
            assert!(Slot::of(key.as_bytes()).get() < SLOT_COUNT);
        }
        assert_eq!(
            Slot::of(b"u42").get(),
            (xxhash_rust::xxh3::xxh3_64(b"u42") % 1024) as u16
        );
    }

    #[test]
    fn new_rejects_out_of_range() {
        assert!(Slot::new(1023).is_some());
        assert!(Slot::new(1024).is_none());
        assert!(serde_json::from_str::<Slot>("1024").is_err());
        assert_eq!(serde_json::from_str::<Slot>("7").unwrap().get(), 7);
    }
}
