//! The replicated tables: every table of the shard that holds business or idempotency rows.
//!
//! This list must match the schema of `migrations/` and the triggers of migrations 0006 and
//! 0008 column for column; `store`'s tests check both against a real database of each dialect.
//! Not replicated: `journal*` (shipped as the log itself), `worker_cursors` (each cell's own
//! progress), `slot_epochs` and `replica_of` (each shard's own fencing and role).

use serde_json::{Map, Value};

use super::{DecodeError, Row};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    /// `BIGINT` / `INTEGER`: money in cents, times in milliseconds, counts, slots.
    Int,
    Text,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
    pub nullable: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    /// Every column, in schema order.
    pub columns: &'static [Column],
    /// The primary key's columns.
    pub key: &'static [&'static str],
}

const fn int(name: &'static str) -> Column {
    Column {
        name,
        ty: ColumnType::Int,
        nullable: false,
    }
}
const fn int_null(name: &'static str) -> Column {
    Column {
        name,
        ty: ColumnType::Int,
        nullable: true,
    }
}
const fn text(name: &'static str) -> Column {
    Column {
        name,
        ty: ColumnType::Text,
        nullable: false,
    }
}
const fn text_null(name: &'static str) -> Column {
    Column {
        name,
        ty: ColumnType::Text,
        nullable: true,
    }
}

pub static TABLES: [Table; 11] = [
    Table {
        name: "subsidies",
        columns: &[
            text("subsidy_id"),
            int("slot"),
            text("grant_id"),
            text("uid"),
            int("amount"),
            text("status"),
            int("expires_at"),
            int("created_at"),
            text_null("packet_id"),
        ],
        key: &["subsidy_id"],
    },
    Table {
        name: "packets",
        columns: &[
            text("packet_id"),
            int("slot"),
            text("sender"),
            text("kind"),
            int("total"),
            int("count"),
            int("remaining_amount"),
            int("remaining_count"),
            int("refunded_amount"),
            text("status"),
            text("greeting"),
            int("created_at"),
            int("expires_at"),
            text_null("subsidy_id"),
            text_null("payment_id"),
        ],
        key: &["packet_id"],
    },
    Table {
        name: "payments",
        columns: &[
            text("payment_id"),
            int("slot"),
            text("packet_id"),
            int("amount"),
            text("status"),
            int("created_at"),
            int("updated_at"),
            int("registered"),
            int("next_check_at"),
            int("deadline_at"),
        ],
        key: &["payment_id"],
    },
    Table {
        name: "claims",
        columns: &[
            text("claim_id"),
            int("slot"),
            text("packet_id"),
            text("uid"),
            int("amount"),
            int("claimed_at"),
            int("remaining_count"),
            text("transfer_id"),
        ],
        key: &["claim_id"],
    },
    Table {
        name: "transfers",
        columns: &[
            text("transfer_id"),
            int("slot"),
            text("claim_id"),
            text("packet_id"),
            text("to_uid"),
            int("amount"),
            text("status"),
            int("created_at"),
            int_null("completed_at"),
            int("attempts"),
            int("next_attempt_at"),
            text_null("delivered_to"),
        ],
        key: &["transfer_id"],
    },
    Table {
        name: "wallets",
        columns: &[text("uid"), int("slot"), int("balance")],
        key: &["uid"],
    },
    Table {
        name: "wallet_credits",
        columns: &[
            text("source_id"),
            int("slot"),
            text("uid"),
            int("amount"),
            text("kind"),
            int("created_at"),
            text_null("packet_id"),
        ],
        key: &["source_id"],
    },
    Table {
        name: "pool_returns",
        columns: &[
            text("source_id"),
            int("slot"),
            int("amount"),
            int("created_at"),
        ],
        key: &["source_id"],
    },
    Table {
        name: "idem_uid",
        columns: &[
            text("uid"),
            text("operation"),
            text("idem_key"),
            int("slot"),
            text("request_hash"),
            int("status_code"),
            text("response_body"),
            int("created_at"),
        ],
        key: &["uid", "operation", "idem_key"],
    },
    Table {
        name: "idem_order",
        columns: &[
            text("order_id"),
            text("operation"),
            int("slot"),
            text("uid"),
            text("state"),
            text("result"),
            int("created_at"),
        ],
        key: &["order_id", "operation"],
    },
    // The shard's promotions (migration 0008): slot -1, the shard's own row.
    Table {
        name: "shard_history",
        columns: &[
            int("pos"),
            int("slot"),
            text("shard"),
            text("cell"),
            int("epoch"),
            int("promoted_at"),
        ],
        key: &["pos"],
    },
];

/// The replicated table called `name`.
pub fn find(name: &str) -> Option<&'static Table> {
    TABLES.iter().find(|t| t.name == name)
}

impl Table {
    /// `value` as a row of this table: an object with exactly this table's columns, each of
    /// its type (null only where the column is nullable). Anything else is refused, so an
    /// applier never builds SQL from a name it does not know.
    pub fn check_row(&'static self, value: Value) -> Result<Row, DecodeError> {
        let bad = |reason: String| DecodeError::BadRow {
            table: self.name.to_owned(),
            reason,
        };
        let Value::Object(row) = value else {
            return Err(bad("not an object".into()));
        };
        if row.len() != self.columns.len() {
            return Err(bad(format!(
                "{} columns, the table has {}",
                row.len(),
                self.columns.len()
            )));
        }
        for col in self.columns {
            let v = row
                .get(col.name)
                .ok_or_else(|| bad(format!("missing column {}", col.name)))?;
            let fits = match (v, col.ty) {
                (Value::Null, _) => col.nullable,
                (Value::Number(n), ColumnType::Int) => n.is_i64(),
                (Value::String(_), ColumnType::Text) => true,
                _ => false,
            };
            if !fits {
                return Err(bad(format!("column {} holds {v}", col.name)));
            }
        }
        Ok(row)
    }

    /// The slot a row belongs to (every replicated table has one).
    pub fn slot_of(row: &Map<String, Value>) -> Option<i64> {
        row.get("slot").and_then(Value::as_i64)
    }

    pub fn column_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.columns.iter().map(|c| c.name)
    }
}
