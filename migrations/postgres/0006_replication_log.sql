-- The journal becomes the shard's complete replication log (DESIGN §6.2).
--
-- Every change to a replicated table appends a row-change record (`row_upsert` with the
-- full row image after the change, or `row_delete` with the image before it) in the same
-- transaction, written by the trigger below so no code path can forget one. Worker events
-- (`transfer_created`, …) stay records of the same log.
--
-- Positions and the commit-order trap: a sequence value is taken before commit, so seq 41
-- can commit after seq 42 and a reader that took "everything after 41" would skip it. Here
-- a transaction's records carry its transaction id (`txn`), and the transaction takes its
-- position as its very last statement before COMMIT, by updating the one row of
-- `journal_head`: that row lock is held until COMMIT ends, so positions are handed out in
-- commit order and a reader that sees position p sees every position below it. Only this
-- last step is serialised; the rest of each transaction runs concurrently.
--
-- On a replica, the setting `redcell.applying` is 'on' only inside the applying
-- transaction: records are then copied verbatim, not generated again.
ALTER TABLE journal ADD COLUMN txn BIGINT NOT NULL DEFAULT 0;
ALTER TABLE journal ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
CREATE INDEX journal_txn ON journal (txn, seq);

CREATE TABLE journal_commits (
    pos        BIGINT PRIMARY KEY,
    txn        BIGINT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE journal_head (
    id       BIGINT PRIMARY KEY CHECK (id = 1),
    pos      BIGINT NOT NULL,
    applying BIGINT NOT NULL DEFAULT 0
);

-- Entries written before this migration become one commit each, at their old seq, so the
-- workers' cursors (seq numbers) stay valid as positions. Their txn is -seq: never a live
-- transaction id (those are positive).
UPDATE journal SET txn = -seq;
INSERT INTO journal_commits (pos, txn, created_at) SELECT seq, -seq, created_at FROM journal;
INSERT INTO journal_head (id, pos, applying) SELECT 1, COALESCE(MAX(seq), 0), 0 FROM journal;

-- The epoch under which this shard holds each slot (DESIGN §6.4); records carry it.
CREATE TABLE slot_epochs (
    slot  BIGINT PRIMARY KEY,
    epoch BIGINT NOT NULL
);

-- On a replica shard: whose log it replicates (the applied position is journal_head.pos).
CREATE TABLE replica_of (
    id         BIGINT PRIMARY KEY CHECK (id = 1),
    shard      TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE FUNCTION redcell_journal_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF current_setting('redcell.applying', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        r := OLD;
    ELSE
        r := NEW;
    END IF;
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES (pg_current_xact_id()::text::bigint, r.slot,
            COALESCE((SELECT epoch FROM slot_epochs WHERE slot = r.slot), 0),
            CASE WHEN TG_OP = 'DELETE' THEN 'row_delete' ELSE 'row_upsert' END,
            TG_TABLE_NAME, to_jsonb(r)::text, 0);
    RETURN NULL;
END
$$;

CREATE TRIGGER journal_subsidies AFTER INSERT OR UPDATE OR DELETE ON subsidies
    FOR EACH ROW EXECUTE FUNCTION redcell_journal_row();
CREATE TRIGGER journal_packets AFTER INSERT OR UPDATE OR DELETE ON packets
    FOR EACH ROW EXECUTE FUNCTION redcell_journal_row();
CREATE TRIGGER journal_payments AFTER INSERT OR UPDATE OR DELETE ON payments
    FOR EACH ROW EXECUTE FUNCTION redcell_journal_row();
CREATE TRIGGER journal_claims AFTER INSERT OR UPDATE OR DELETE ON claims
    FOR EACH ROW EXECUTE FUNCTION redcell_journal_row();
CREATE TRIGGER journal_transfers AFTER INSERT OR UPDATE OR DELETE ON transfers
    FOR EACH ROW EXECUTE FUNCTION redcell_journal_row();
CREATE TRIGGER journal_wallets AFTER INSERT OR UPDATE OR DELETE ON wallets
    FOR EACH ROW EXECUTE FUNCTION redcell_journal_row();
CREATE TRIGGER journal_wallet_credits AFTER INSERT OR UPDATE OR DELETE ON wallet_credits
    FOR EACH ROW EXECUTE FUNCTION redcell_journal_row();
CREATE TRIGGER journal_pool_returns AFTER INSERT OR UPDATE OR DELETE ON pool_returns
    FOR EACH ROW EXECUTE FUNCTION redcell_journal_row();
CREATE TRIGGER journal_idem_uid AFTER INSERT OR UPDATE OR DELETE ON idem_uid
    FOR EACH ROW EXECUTE FUNCTION redcell_journal_row();
CREATE TRIGGER journal_idem_order AFTER INSERT OR UPDATE OR DELETE ON idem_order
    FOR EACH ROW EXECUTE FUNCTION redcell_journal_row();
