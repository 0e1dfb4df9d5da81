//! Ids the system mints. Each carries the slot it routes by, so the router needs nothing but
//! the map: `{prefix}_{slot as 3 hex digits}{20 random hex digits}`, e.g. `pk_3ff9a0c…`.

use std::fmt;

use rand::Rng;

use crate::Slot;

/// What an id names; the prefix tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdKind {
    Packet,
    Payment,
    Subsidy,
    Claim,
    Transfer,
}

impl IdKind {
    pub fn prefix(self) -> &'static str {
        match self {
            IdKind::Packet => "pk",
            IdKind::Payment => "pay",
            IdKind::Subsidy => "sb",
            IdKind::Claim => "cl",
            IdKind::Transfer => "tr",
        }
    }

    fn from_prefix(p: &str) -> Option<IdKind> {
        [
            IdKind::Packet,
            IdKind::Payment,
            IdKind::Subsidy,
            IdKind::Claim,
            IdKind::Transfer,
        ]
        .into_iter()
        .find(|k| k.prefix() == p)
    }
}

const RANDOM_HEX: usize = 20;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseIdError {
    #[error("not a {expected} id")]
    WrongShape { expected: &'static str },
}

/// A parsed, well-formed minted id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MintedId {
    kind: IdKind,
    slot: Slot,
    text: String,
}

impl MintedId {
    /// A fresh id of `kind` that routes to `slot`.
    pub fn mint(kind: IdKind, slot: Slot) -> MintedId {
        let random: u128 = rand::thread_rng().gen();
        let random = format!("{:032x}", random);
        let text = format!(
            "{}_{:03x}{}",
            kind.prefix(),
            slot.get(),
            &random[..RANDOM_HEX]
        );
        MintedId { kind, slot, text }
    }

    /// Parses any minted id, whatever its kind.
    pub fn parse_any(text: &str) -> Result<MintedId, ParseIdError> {
        let bad = ParseIdError::WrongShape { expected: "minted" };
        let (prefix, rest) = text.split_once('_').ok_or(bad.clone())?;
        let kind = IdKind::from_prefix(prefix).ok_or(bad.clone())?;
        if rest.len() != 3 + RANDOM_HEX
            || !rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad);
        }
        let slot = u16::from_str_radix(&rest[..3], 16)
            .ok()
            .and_then(Slot::new)
            .ok_or(bad)?;
        Ok(MintedId {
            kind,
            slot,
            text: text.to_owned(),
        })
    }

    /// Parses an id that must be of `kind`.
    pub fn parse(kind: IdKind, text: &str) -> Result<MintedId, ParseIdError> {
        match MintedId::parse_any(text) {
            Ok(id) if id.kind == kind => Ok(id),
            _ => Err(ParseIdError::WrongShape {
                expected: kind.prefix(),
            }),
        }
    }

    pub fn kind(&self) -> IdKind {
        self.kind
    }

    pub fn slot(&self) -> Slot {
        self.slot
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn into_string(self) -> String {
        self.text
    }
}

impl fmt::Display for MintedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn minted_ids_round_trip_and_stay_short() {
        for n in [0u16, 1, 511, 1023] {
            let slot = Slot::new(n).unwrap();
            let id = MintedId::mint(IdKind::Payment, slot);
            assert!(id.as_str().len() <= 40);
            let back = MintedId::parse(IdKind::Payment, id.as_str()).unwrap();
            assert_eq!(back.slot(), slot);
            assert!(MintedId::parse(IdKind::Packet, id.as_str()).is_err());
        }
    }

    #[test]
    fn rejects_odd_ids() {
        for bad in [
            "",
            "pk",
            "pk_",
            "pk_zzz",
            "pk_400aaaaaaaaaaaaaaaaaaaa",
            "xx_0000000000000000000000",
            "pk_000AAAAAAAAAAAAAAAAAAAA",
            "pk_00000000000000000000000x",
            "../etc/passwd",
        ] {
            assert!(MintedId::parse_any(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,60}") {
            let _ = MintedId::parse_any(&s);
        }
    }
}
