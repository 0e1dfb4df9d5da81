//! The shard's journal as typed values: what a record is, what a commit is, which tables
//! are replicated and what their columns are. Pure: no SQL, no I/O (`store/journal.rs`
//! reads and writes it; `replication/` ships it).
//!
//! The journal is the replication log (DESIGN §6.2). Every writing transaction appends, in
//! the same transaction, one [`Change`] per row it touched in a replicated table (written by
//! database triggers, so no code path can forget one) and the worker [`Event`]s it raised.
//! The transaction's records together are one [`Commit`] at one [`Position`]; positions are
//! handed out in commit order and without gaps, so a replica that applies commits one after
//! the other, each exactly once, holds exactly the primary's rows.

pub mod tables;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use tables::{Column, ColumnType, Table, TABLES};

/// A commit's place in its shard's journal: 1, 2, 3, … without gaps. 0 is "nothing yet".
pub type Position = i64;

/// The worker events of the log. Their kind strings are the stored form; nothing else in
/// the crate spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    PacketCreated,
    PaymentCreated,
    PaymentSettled,
    SubsidyGranted,
    SubsidyExpired,
    TransferCreated,
    TransferCompleted,
    TransferReceived,
    PacketExpired,
    PacketRefunded,
}

impl Event {
    pub const ALL: [Event; 10] = [
        Event::PacketCreated,
        Event::PaymentCreated,
        Event::PaymentSettled,
        Event::SubsidyGranted,
        Event::SubsidyExpired,
        Event::TransferCreated,
        Event::TransferCompleted,
        Event::TransferReceived,
        Event::PacketExpired,
        Event::PacketRefunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::PacketCreated => "packet_created",
            Event::PaymentCreated => "payment_created",
            Event::PaymentSettled => "payment_settled",
            Event::SubsidyGranted => "subsidy_granted",
            Event::SubsidyExpired => "subsidy_expired",
            Event::TransferCreated => "transfer_created",
            Event::TransferCompleted => "transfer_completed",
            Event::TransferReceived => "transfer_received",
            Event::PacketExpired => "packet_expired",
            Event::PacketRefunded => "packet_refunded",
        }
    }

    pub fn parse(s: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// The stored kinds of row-change records (written by the triggers of migration 0006).
pub const ROW_UPSERT: &str = "row_upsert";
pub const ROW_DELETE: &str = "row_delete";

/// One row of a replicated table changed.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// The row's full image after an insert or update.
    Upsert { table: &'static Table, row: Row },
    /// The row's image before it was deleted (its key columns identify it).
    Delete { table: &'static Table, row: Row },
}

/// A row image: column name → JSON value (integers, strings, null), every column of its
/// table present, nothing else.
pub type Row = Map<String, Value>;

/// What one journal record says.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Change(Change),
    Event {
        event: Event,
        entity_id: String,
        payload: Value,
    },
}

/// One journal record, typed.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub slot: i64,
    /// The epoch under which the shard held `slot` when the record was written.
    pub epoch: i64,
    pub body: Body,
    /// Milliseconds (events: the cell's clock; row changes: 0, the commit has the time).
    pub created_at: i64,
}

/// Why a stored or shipped record cannot be understood. A replica refuses the whole batch.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unknown record kind {0:?}")]
    UnknownKind(String),
    #[error("unknown table {0:?}")]
    UnknownTable(String),
    #[error("row of {table}: {reason}")]
    BadRow { table: String, reason: String },
    #[error("payload is not JSON: {0}")]
    BadPayload(String),
}

impl Record {
    /// Builds a record from its stored columns (`kind`, `entity_id`, `payload`).
    pub fn decode(
        slot: i64,
        epoch: i64,
        kind: &str,
        entity_id: &str,
        payload: &str,
        created_at: i64,
    ) -> Result<Record, DecodeError> {
        let value: Value =
            serde_json::from_str(payload).map_err(|e| DecodeError::BadPayload(e.to_string()))?;
        let body = match kind {
            ROW_UPSERT | ROW_DELETE => {
                let table = tables::find(entity_id)
                    .ok_or_else(|| DecodeError::UnknownTable(entity_id.to_owned()))?;
                let row = table.check_row(value)?;
                Body::Change(if kind == ROW_UPSERT {
                    Change::Upsert { table, row }
                } else {
                    Change::Delete { table, row }
                })
            }
            other => Body::Event {
                event: Event::parse(other)
                    .ok_or_else(|| DecodeError::UnknownKind(other.to_owned()))?,
                entity_id: entity_id.to_owned(),
                payload: value,
            },
        };
        Ok(Record {
            slot,
            epoch,
            body,
            created_at,
        })
    }

    /// The stored columns `(kind, entity_id, payload)` of this record.
    pub fn encode(&self) -> (&'static str, String, String) {
        match &self.body {
            Body::Change(Change::Upsert { table, row }) => (
                ROW_UPSERT,
                table.name.to_owned(),
                Value::from(row.clone()).to_string(),
            ),
            Body::Change(Change::Delete { table, row }) => (
                ROW_DELETE,
                table.name.to_owned(),
                Value::from(row.clone()).to_string(),
            ),
            Body::Event {
                event,
                entity_id,
                payload,
            } => (event.as_str(), entity_id.clone(), payload.to_string()),
        }
    }
}

/// One committed transaction's records, in the order it wrote them.
#[derive(Clone, Debug, PartialEq)]
pub struct Commit {
    pub pos: Position,
    /// When the primary committed it (wall clock, milliseconds): the replica's lag in time.
    pub committed_at: i64,
    pub records: Vec<Record>,
}

/// The wire form of a record, as the primary ships it to its backup.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireRecord {
    pub slot: i64,
    pub epoch: i64,
    pub kind: String,
    pub entity_id: String,
    pub payload: String,
    pub created_at: i64,
}

/// The wire form of a commit.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireCommit {
    pub pos: Position,
    pub committed_at: i64,
    pub records: Vec<WireRecord>,
}

impl From<&Commit> for WireCommit {
    fn from(c: &Commit) -> WireCommit {
        WireCommit {
            pos: c.pos,
            committed_at: c.committed_at,
            records: c
                .records
                .iter()
                .map(|r| {
                    let (kind, entity_id, payload) = r.encode();
                    WireRecord {
                        slot: r.slot,
                        epoch: r.epoch,
                        kind: kind.to_owned(),
                        entity_id,
                        payload,
                        created_at: r.created_at,
                    }
                })
                .collect(),
        }
    }
}

impl TryFrom<WireCommit> for Commit {
    type Error = DecodeError;
    fn try_from(w: WireCommit) -> Result<Commit, DecodeError> {
        let records = w
            .records
            .into_iter()
            .map(|r| {
                Record::decode(
                    r.slot,
                    r.epoch,
                    &r.kind,
                    &r.entity_id,
                    &r.payload,
                    r.created_at,
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Commit {
            pos: w.pos,
            committed_at: w.committed_at,
            records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_round_trip() {
        for e in Event::ALL {
            assert_eq!(Event::parse(e.as_str()), Some(e));
        }
        assert_eq!(Event::parse("row_upsert"), None);
    }

    #[test]
    fn decode_checks_tables_and_columns() {
        let wallet = r#"{"uid":"u1","slot":3,"balance":10}"#;
        let r = Record::decode(3, 1, ROW_UPSERT, "wallets", wallet, 0).unwrap();
        assert!(
            matches!(r.body, Body::Change(Change::Upsert { table, .. }) if table.name == "wallets")
        );
        let (kind, entity, payload) = r.encode();
        assert_eq!((kind, entity.as_str()), (ROW_UPSERT, "wallets"));
        assert_eq!(Record::decode(3, 1, kind, &entity, &payload, 0).unwrap(), r);

        assert_eq!(
            Record::decode(3, 1, ROW_UPSERT, "journal", wallet, 0),
            Err(DecodeError::UnknownTable("journal".into()))
        );
        let extra = r#"{"uid":"u1","slot":3,"balance":10,"evil":1}"#;
        assert!(matches!(
            Record::decode(3, 1, ROW_UPSERT, "wallets", extra, 0),
            Err(DecodeError::BadRow { .. })
        ));
        let missing = r#"{"uid":"u1","slot":3}"#;
        assert!(matches!(
            Record::decode(3, 1, ROW_UPSERT, "wallets", missing, 0),
            Err(DecodeError::BadRow { .. })
        ));
        let wrong_type = r#"{"uid":"u1","slot":3,"balance":"10"}"#;
        assert!(matches!(
            Record::decode(3, 1, ROW_UPSERT, "wallets", wrong_type, 0),
            Err(DecodeError::BadRow { .. })
        ));
        let null_key = r#"{"uid":null,"slot":3,"balance":10}"#;
        assert!(matches!(
            Record::decode(3, 1, ROW_UPSERT, "wallets", null_key, 0),
            Err(DecodeError::BadRow { .. })
        ));
        assert_eq!(
            Record::decode(3, 1, "nonsense", "x", "{}", 0),
            Err(DecodeError::UnknownKind("nonsense".into()))
        );
    }
}
