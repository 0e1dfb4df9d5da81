use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Slot;

/// A user id: 1–64 characters from `A–Z a–z 0–9 _ - .` (API.md). Built only by parsing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Uid(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a uid is 1-64 characters from A-Z a-z 0-9 _ - .")]
pub struct BadUid;

impl Uid {
    pub fn parse(s: &str) -> Result<Uid, BadUid> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(Uid(s.to_owned()))
        } else {
            Err(BadUid)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The user's home slot.
    pub fn slot(&self) -> Slot {
        Slot::of(self.0.as_bytes())
    }
}

impl TryFrom<String> for Uid {
    type Error = BadUid;
    fn try_from(s: String) -> Result<Uid, BadUid> {
        Uid::parse(&s)
    }
}

impl From<Uid> for String {
    fn from(u: Uid) -> String {
        u.0
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn accepts_and_rejects() {
        assert!(Uid::parse("u42").is_ok());
        assert!(Uid::parse("A.b-c_9").is_ok());
        assert!(Uid::parse(&"x".repeat(64)).is_ok());
        for bad in ["", "a b", "新", "a/b", "a%2F", &"x".repeat(65)] {
            assert!(Uid::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parse_agrees_with_the_rule(s in "\\PC{0,70}") {
            let ok = !s.is_empty() && s.len() <= 64
                && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            prop_assert_eq!(Uid::parse(&s).is_ok(), ok);
        }
    }
}
