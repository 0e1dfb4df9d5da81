//! User ids, minted ids and history cursors: the text a client puts in paths and queries.
//! Whatever the input, parsing never panics; what parses prints back to exactly the input,
//! routes to a real slot, and survives its JSON form; a cursor we encode decodes to itself.

use cell::domain::validate::{encode_cursor, history, HistoryQuery};
use topology::{IdKind, MintedId, Uid, SLOT_COUNT};

const KINDS: [IdKind; 5] = [
    IdKind::Packet,
    IdKind::Payment,
    IdKind::Subsidy,
    IdKind::Claim,
    IdKind::Transfer,
];

/// The target: panics (an assertion) on an input that breaks what the module says.
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();

    if let Ok(uid) = Uid::parse(text) {
        assert_eq!(uid.as_str(), text);
        assert_eq!(uid.to_string(), text);
        assert!(uid.slot().get() < SLOT_COUNT);
        let json = serde_json::to_string(&uid).unwrap();
        assert_eq!(serde_json::from_str::<Uid>(&json).unwrap(), uid);
    } else {
        assert!(serde_json::from_value::<Uid>(serde_json::Value::from(text)).is_err());
    }

    match MintedId::parse_any(text) {
        Ok(id) => {
            assert_eq!(id.as_str(), text);
            assert_eq!(id.to_string(), text);
            assert!(id.slot().get() < SLOT_COUNT);
            for kind in KINDS {
                // Exactly its own kind accepts it, with the same slot.
                let parsed = MintedId::parse(kind, text);
                assert_eq!(parsed.is_ok(), kind == id.kind(), "{kind:?} {text:?}");
                if let Ok(again) = parsed {
                    assert_eq!(again, id);
                }
            }
            // A fresh id of the same kind and slot parses as that kind and slot.
            let fresh = MintedId::mint(id.kind(), id.slot());
            let fresh = MintedId::parse_any(fresh.as_str()).unwrap();
            assert_eq!((fresh.kind(), fresh.slot()), (id.kind(), id.slot()));
        }
        Err(_) => {
            for kind in KINDS {
                assert!(MintedId::parse(kind, text).is_err());
            }
        }
    }

    // A cursor: any text is a 400 or a position; a position we print is read back as itself.
    let query = |cursor: String| HistoryQuery {
        role: None,
        limit: None,
        cursor: Some(cursor),
    };
    if let Ok(h) = history(query(text.to_owned())) {
        if let Some((at, id)) = h.after {
            let again = history(query(encode_cursor(at, &id))).unwrap();
            assert_eq!(again.after, Some((at, id)));
        }
    }
}
