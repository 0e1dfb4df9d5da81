-- The journal becomes the shard's complete replication log (DESIGN §6.2).
--
-- Every change to a replicated table appends a row-change record (`row_upsert` with the
-- full row image after the change, or `row_delete` with the image before it) in the same
-- transaction, written by the triggers below so no code path can forget one. Worker events
-- (`transfer_created`, …) stay records of the same log.
--
-- Positions: a writing transaction's records share its `txn`; the transaction gets its
-- position as its last statement before COMMIT (`journal_commits`, numbered from the one
-- row of `journal_head`). SQLite has one writer, so `txn` is simply the position the
-- transaction will take (head + 1). On a replica, `journal_head.applying` is 1 only inside
-- the applying transaction: records are then copied verbatim, not generated again.
ALTER TABLE journal ADD COLUMN txn INTEGER NOT NULL DEFAULT 0;
ALTER TABLE journal ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
CREATE INDEX journal_txn ON journal (txn, seq);

CREATE TABLE journal_commits (
    pos        INTEGER PRIMARY KEY,
    txn        INTEGER NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE journal_head (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    pos      INTEGER NOT NULL,
    applying INTEGER NOT NULL DEFAULT 0
);

-- Entries written before this migration become one commit each, at their old seq, so the
-- workers' cursors (seq numbers) stay valid as positions. Their txn is -seq: never a txn a
-- live transaction uses (those are positive).
UPDATE journal SET txn = -seq;
INSERT INTO journal_commits (pos, txn, created_at) SELECT seq, -seq, created_at FROM journal;
INSERT INTO journal_head (id, pos, applying) SELECT 1, COALESCE(MAX(seq), 0), 0 FROM journal;

-- The epoch under which this shard holds each slot (DESIGN §6.4); records carry it.
CREATE TABLE slot_epochs (
    slot  INTEGER PRIMARY KEY,
    epoch INTEGER NOT NULL
);

-- On a replica shard: what it replicates and the position durably applied. (One row; the
-- applied position itself is journal_head.pos, this names whose log it is.)
CREATE TABLE replica_of (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    shard      TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TRIGGER journal_subsidies_ins AFTER INSERT ON subsidies
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = NEW.slot), 0),
            'row_upsert', 'subsidies', json_object('subsidy_id', NEW.subsidy_id, 'slot', NEW.slot, 'grant_id', NEW.grant_id, 'uid', NEW.uid, 'amount', NEW.amount, 'status', NEW.status, 'expires_at', NEW.expires_at, 'created_at', NEW.created_at, 'packet_id', NEW.packet_id), 0);
END;

CREATE TRIGGER journal_subsidies_upd AFTER UPDATE ON subsidies
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = NEW.slot), 0),
            'row_upsert', 'subsidies', json_object('subsidy_id', NEW.subsidy_id, 'slot', NEW.slot, 'grant_id', NEW.grant_id, 'uid', NEW.uid, 'amount', NEW.amount, 'status', NEW.status, 'expires_at', NEW.expires_at, 'created_at', NEW.created_at, 'packet_id', NEW.packet_id), 0);
END;

CREATE TRIGGER journal_subsidies_del AFTER DELETE ON subsidies
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), OLD.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = OLD.slot), 0),
            'row_delete', 'subsidies', json_object('subsidy_id', OLD.subsidy_id, 'slot', OLD.slot, 'grant_id', OLD.grant_id, 'uid', OLD.uid, 'amount', OLD.amount, 'status', OLD.status, 'expires_at', OLD.expires_at, 'created_at', OLD.created_at, 'packet_id', OLD.packet_id), 0);
END;

CREATE TRIGGER journal_packets_ins AFTER INSERT ON packets
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = NEW.slot), 0),
            'row_upsert', 'packets', json_object('packet_id', NEW.packet_id, 'slot', NEW.slot, 'sender', NEW.sender, 'kind', NEW.kind, 'total', NEW.total, 'count', NEW.count, 'remaining_amount', NEW.remaining_amount, 'remaining_count', NEW.remaining_count, 'refunded_amount', NEW.refunded_amount, 'status', NEW.status, 'greeting', NEW.greeting, 'created_at', NEW.created_at, 'expires_at', NEW.expires_at, 'subsidy_id', NEW.subsidy_id, 'payment_id', NEW.payment_id), 0);
END;

CREATE TRIGGER journal_packets_upd AFTER UPDATE ON packets
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = NEW.slot), 0),
            'row_upsert', 'packets', json_object('packet_id', NEW.packet_id, 'slot', NEW.slot, 'sender', NEW.sender, 'kind', NEW.kind, 'total', NEW.total, 'count', NEW.count, 'remaining_amount', NEW.remaining_amount, 'remaining_count', NEW.remaining_count, 'refunded_amount', NEW.refunded_amount, 'status', NEW.status, 'greeting', NEW.greeting, 'created_at', NEW.created_at, 'expires_at', NEW.expires_at, 'subsidy_id', NEW.subsidy_id, 'payment_id', NEW.payment_id), 0);
END;

CREATE TRIGGER journal_packets_del AFTER DELETE ON packets
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), OLD.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = OLD.slot), 0),
            'row_delete', 'packets', json_object('packet_id', OLD.packet_id, 'slot', OLD.slot, 'sender', OLD.sender, 'kind', OLD.kind, 'total', OLD.total, 'count', OLD.count, 'remaining_amount', OLD.remaining_amount, 'remaining_count', OLD.remaining_count, 'refunded_amount', OLD.refunded_amount, 'status', OLD.status, 'greeting', OLD.greeting, 'created_at', OLD.created_at, 'expires_at', OLD.expires_at, 'subsidy_id', OLD.subsidy_id, 'payment_id', OLD.payment_id), 0);
END;

CREATE TRIGGER journal_payments_ins AFTER INSERT ON payments
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = NEW.slot), 0),
            'row_upsert', 'payments', json_object('payment_id', NEW.payment_id, 'slot', NEW.slot, 'packet_id', NEW.packet_id, 'amount', NEW.amount, 'status', NEW.status, 'created_at', NEW.created_at, 'updated_at', NEW.updated_at, 'registered', NEW.registered, 'next_check_at', NEW.next_check_at, 'deadline_at', NEW.deadline_at), 0);
END;

CREATE TRIGGER journal_payments_upd AFTER UPDATE ON payments
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = NEW.slot), 0),
            'row_upsert', 'payments', json_object('payment_id', NEW.payment_id, 'slot', NEW.slot, 'packet_id', NEW.packet_id, 'amount', NEW.amount, 'status', NEW.status, 'created_at', NEW.created_at, 'updated_at', NEW.updated_at, 'registered', NEW.registered, 'next_check_at', NEW.next_check_at, 'deadline_at', NEW.deadline_at), 0);
END;

CREATE TRIGGER journal_payments_del AFTER DELETE ON payments
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), OLD.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = OLD.slot), 0),
            'row_delete', 'payments', json_object('payment_id', OLD.payment_id, 'slot', OLD.slot, 'packet_id', OLD.packet_id, 'amount', OLD.amount, 'status', OLD.status, 'created_at', OLD.created_at, 'updated_at', OLD.updated_at, 'registered', OLD.registered, 'next_check_at', OLD.next_check_at, 'deadline_at', OLD.deadline_at), 0);
END;

CREATE TRIGGER journal_claims_ins AFTER INSERT ON claims
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = NEW.slot), 0),
            'row_upsert', 'claims', json_object('claim_id', NEW.claim_id, 'slot', NEW.slot, 'packet_id', NEW.packet_id, 'uid', NEW.uid, 'amount', NEW.amount, 'claimed_at', NEW.claimed_at, 'remaining_count', NEW.remaining_count, 'transfer_id', NEW.transfer_id), 0);
END;

CREATE TRIGGER journal_claims_upd AFTER UPDATE ON claims
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = NEW.slot), 0),
            'row_upsert', 'claims', json_object('claim_id', NEW.claim_id, 'slot', NEW.slot, 'packet_id', NEW.packet_id, 'uid', NEW.uid, 'amount', NEW.amount, 'claimed_at', NEW.claimed_at, 'remaining_count', NEW.remaining_count, 'transfer_id', NEW.transfer_id), 0);
END;

CREATE TRIGGER journal_claims_del AFTER DELETE ON claims
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), OLD.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = OLD.slot), 0),
            'row_delete', 'claims', json_object('claim_id', OLD.claim_id, 'slot', OLD.slot, 'packet_id', OLD.packet_id, 'uid', OLD.uid, 'amount', OLD.amount, 'claimed_at', OLD.claimed_at, 'remaining_count', OLD.remaining_count, 'transfer_id', OLD.transfer_id), 0);
END;

CREATE TRIGGER journal_transfers_ins AFTER INSERT ON transfers
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = NEW.slot), 0),
            'row_upsert', 'transfers', json_object('transfer_id', NEW.transfer_id, 'slot', NEW.slot, 'claim_id', NEW.claim_id, 'packet_id', NEW.packet_id, 'to_uid', NEW.to_uid, 'amount', NEW.amount, 'status', NEW.status, 'created_at', NEW.created_at, 'completed_at', NEW.completed_at, 'attempts', NEW.attempts, 'next_attempt_at', NEW.next_attempt_at, 'delivered_to', NEW.delivered_to), 0);
END;

CREATE TRIGGER journal_transfers_upd AFTER UPDATE ON transfers
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = NEW.slot), 0),
            'row_upsert', 'transfers', json_object('transfer_id', NEW.transfer_id, 'slot', NEW.slot, 'claim_id', NEW.claim_id, 'packet_id', NEW.packet_id, 'to_uid', NEW.to_uid, 'amount', NEW.amount, 'status', NEW.status, 'created_at', NEW.created_at, 'completed_at', NEW.completed_at, 'attempts', NEW.attempts, 'next_attempt_at', NEW.next_attempt_at, 'delivered_to', NEW.delivered_to), 0);
END;

CREATE TRIGGER journal_transfers_del AFTER DELETE ON transfers
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), OLD.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = OLD.slot), 0),
            'row_delete', 'transfers', json_object('transfer_id', OLD.transfer_id, 'slot', OLD.slot, 'claim_id', OLD.claim_id, 'packet_id', OLD.packet_id, 'to_uid', OLD.to_uid, 'amount', OLD.amount, 'status', OLD.status, 'created_at', OLD.created_at, 'completed_at', OLD.completed_at, 'attempts', OLD.attempts, 'next_attempt_at', OLD.next_attempt_at, 'delivered_to', OLD.delivered_to), 0);
END;

CREATE TRIGGER journal_wallets_ins AFTER INSERT ON wallets
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = NEW.slot), 0),
            'row_upsert', 'wallets', json_object('uid', NEW.uid, 'slot', NEW.slot, 'balance', NEW.balance), 0);
END;

CREATE TRIGGER journal_wallets_upd AFTER UPDATE ON wallets
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = NEW.slot), 0),
            'row_upsert', 'wallets', json_object('uid', NEW.uid, 'slot', NEW.slot, 'balance', NEW.balance), 0);
END;

CREATE TRIGGER journal_wallets_del AFTER DELETE ON wallets
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), OLD.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = OLD.slot), 0),
            'row_delete', 'wallets', json_object('uid', OLD.uid, 'slot', OLD.slot, 'balance', OLD.balance), 0);
END;

CREATE TRIGGER journal_wallet_credits_ins AFTER INSERT ON wallet_credits
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = NEW.slot), 0),
            'row_upsert', 'wallet_credits', json_object('source_id', NEW.source_id, 'slot', NEW.slot, 'uid', NEW.uid, 'amount', NEW.amount, 'kind', NEW.kind, 'created_at', NEW.created_at, 'packet_id', NEW.packet_id), 0);
END;

CREATE TRIGGER journal_wallet_credits_upd AFTER UPDATE ON wallet_credits
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = NEW.slot), 0),
            'row_upsert', 'wallet_credits', json_object('source_id', NEW.source_id, 'slot', NEW.slot, 'uid', NEW.uid, 'amount', NEW.amount, 'kind', NEW.kind, 'created_at', NEW.created_at, 'packet_id', NEW.packet_id), 0);
END;

CREATE TRIGGER journal_wallet_credits_del AFTER DELETE ON wallet_credits
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), OLD.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = OLD.slot), 0),
            'row_delete', 'wallet_credits', json_object('source_id', OLD.source_id, 'slot', OLD.slot, 'uid', OLD.uid, 'amount', OLD.amount, 'kind', OLD.kind, 'created_at', OLD.created_at, 'packet_id', OLD.packet_id), 0);
END;

CREATE TRIGGER journal_pool_returns_ins AFTER INSERT ON pool_returns
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = NEW.slot), 0),
            'row_upsert', 'pool_returns', json_object('source_id', NEW.source_id, 'slot', NEW.slot, 'amount', NEW.amount, 'created_at', NEW.created_at), 0);
END;

CREATE TRIGGER journal_pool_returns_upd AFTER UPDATE ON pool_returns
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = NEW.slot), 0),
            'row_upsert', 'pool_returns', json_object('source_id', NEW.source_id, 'slot', NEW.slot, 'amount', NEW.amount, 'created_at', NEW.created_at), 0);
END;

CREATE TRIGGER journal_pool_returns_del AFTER DELETE ON pool_returns
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), OLD.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = OLD.slot), 0),
            'row_delete', 'pool_returns', json_object('source_id', OLD.source_id, 'slot', OLD.slot, 'amount', OLD.amount, 'created_at', OLD.created_at), 0);
END;

CREATE TRIGGER journal_idem_uid_ins AFTER INSERT ON idem_uid
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = NEW.slot), 0),
            'row_upsert', 'idem_uid', json_object('uid', NEW.uid, 'operation', NEW.operation, 'idem_key', NEW.idem_key, 'slot', NEW.slot, 'request_hash', NEW.request_hash, 'status_code', NEW.status_code, 'response_body', NEW.response_body, 'created_at', NEW.created_at), 0);
END;

CREATE TRIGGER journal_idem_uid_upd AFTER UPDATE ON idem_uid
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = NEW.slot), 0),
            'row_upsert', 'idem_uid', json_object('uid', NEW.uid, 'operation', NEW.operation, 'idem_key', NEW.idem_key, 'slot', NEW.slot, 'request_hash', NEW.request_hash, 'status_code', NEW.status_code, 'response_body', NEW.response_body, 'created_at', NEW.created_at), 0);
END;

CREATE TRIGGER journal_idem_uid_del AFTER DELETE ON idem_uid
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), OLD.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = OLD.slot), 0),
            'row_delete', 'idem_uid', json_object('uid', OLD.uid, 'operation', OLD.operation, 'idem_key', OLD.idem_key, 'slot', OLD.slot, 'request_hash', OLD.request_hash, 'status_code', OLD.status_code, 'response_body', OLD.response_body, 'created_at', OLD.created_at), 0);
END;

CREATE TRIGGER journal_idem_order_ins AFTER INSERT ON idem_order
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = NEW.slot), 0),
            'row_upsert', 'idem_order', json_object('order_id', NEW.order_id, 'operation', NEW.operation, 'slot', NEW.slot, 'uid', NEW.uid, 'state', NEW.state, 'result', NEW.result, 'created_at', NEW.created_at), 0);
END;

CREATE TRIGGER journal_idem_order_upd AFTER UPDATE ON idem_order
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = NEW.slot), 0),
            'row_upsert', 'idem_order', json_object('order_id', NEW.order_id, 'operation', NEW.operation, 'slot', NEW.slot, 'uid', NEW.uid, 'state', NEW.state, 'result', NEW.result, 'created_at', NEW.created_at), 0);
END;

CREATE TRIGGER journal_idem_order_del AFTER DELETE ON idem_order
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), OLD.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = OLD.slot), 0),
            'row_delete', 'idem_order', json_object('order_id', OLD.order_id, 'operation', OLD.operation, 'slot', OLD.slot, 'uid', OLD.uid, 'state', OLD.state, 'result', OLD.result, 'created_at', OLD.created_at), 0);
END;
