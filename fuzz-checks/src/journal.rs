//! Journal record decoding: what a backup reads from its primary (a shipped commit's JSON)
//! and what a shard reads back from its own journal table (a record's stored columns). The
//! first byte picks the form. Decoding never panics; what decodes is a known event or a row
//! of a replicated table with exactly its columns; encoding it and decoding again gives the
//! same record, and the encoding is a fixed point.

use cell::journal::{
    tables, Body, Change, Commit, Event, Record, WireCommit, ROW_DELETE, ROW_UPSERT,
};
use serde_json::Value;

fn round_trip(r: &Record) {
    match &r.body {
        Body::Change(Change::Upsert { table, row } | Change::Delete { table, row }) => {
            assert_eq!(tables::find(table.name).map(|t| t.name), Some(table.name));
            assert_eq!(row.len(), table.columns.len());
            for name in table.column_names() {
                assert!(row.contains_key(name), "{} lacks {name}", table.name);
            }
        }
        Body::Event { event, .. } => assert_eq!(Event::parse(event.as_str()), Some(*event)),
    }
    let (kind, entity_id, payload) = r.encode();
    let again = Record::decode(r.slot, r.epoch, kind, &entity_id, &payload, r.created_at)
        .unwrap_or_else(|e| panic!("{e}: {kind} {entity_id} {payload}"));
    if let Body::Event { payload: value, .. } = &r.body {
        if has_float(value) {
            // serde_json's default float parsing is not correctly rounded: a non-integer
            // number can come back one ulp off (found by this target; RELIABILITY.md). The
            // journal's own payloads and every replicated row hold integers only.
            assert_eq!(again.encode().0, kind);
            return;
        }
    }
    assert_eq!(&again, r);
    assert_eq!(again.encode(), (kind, entity_id, payload));
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => !n.is_i64() && !n.is_u64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(members) => members.values().any(has_float),
        _ => false,
    }
}

/// The target: panics (an assertion) on an input that breaks what the module says.
pub fn check(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        // A shipped commit, as JSON.
        let Ok(wire) = serde_json::from_slice::<WireCommit>(rest) else {
            return;
        };
        let Ok(commit) = Commit::try_from(wire) else {
            return;
        };
        for r in &commit.records {
            round_trip(r);
        }
        let text = serde_json::to_string(&WireCommit::from(&commit)).unwrap();
        let again = Commit::try_from(serde_json::from_str::<WireCommit>(&text).unwrap()).unwrap();
        let floats = commit
            .records
            .iter()
            .any(|r| matches!(&r.body, Body::Event { payload, .. } if has_float(payload)));
        if !floats {
            assert_eq!(again, commit);
        }
        return;
    }
    // A stored record: the kind and table are picked from the real ones (or taken as text),
    // the payload is the rest of the input.
    let Some((&pick, payload)) = rest.split_first() else {
        return;
    };
    let payload = String::from_utf8_lossy(payload);
    let kinds = [ROW_UPSERT, ROW_DELETE];
    let (kind, entity): (String, String) = match pick % 4 {
        0 | 1 => {
            let table = &tables::TABLES[usize::from(pick / 4) % tables::TABLES.len()];
            (
                kinds[usize::from(pick % 2)].to_owned(),
                table.name.to_owned(),
            )
        }
        2 => {
            let event = Event::ALL[usize::from(pick / 4) % Event::ALL.len()];
            (
                event.as_str().to_owned(),
                "pk_0000000000000000000000".to_owned(),
            )
        }
        _ => {
            // Kind and entity from the payload itself, split at the first two newlines.
            let mut parts = payload.splitn(3, '\n');
            let kind = parts.next().unwrap_or_default().to_owned();
            let entity = parts.next().unwrap_or_default().to_owned();
            let body = parts.next().unwrap_or_default().to_owned();
            if let Ok(r) = Record::decode(7, 3, &kind, &entity, &body, 1) {
                round_trip(&r);
            }
            return;
        }
    };
    if let Ok(r) = Record::decode(7, 3, &kind, &entity, &payload, 1) {
        round_trip(&r);
    }
}
