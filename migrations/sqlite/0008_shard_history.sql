-- The shard's history of promotions (DESIGN §6.5). Each time a replica of the shard becomes
-- its primary, the promotion's own transaction writes one row here: it is the first commit
-- of the new primary's history (at `pos`), it is journaled like every business row, so
-- every replica holds the whole history too. A cell that comes back as the shard's backup
-- compares its rows with the primary's: a promotion it lacks below its own head marks where
-- its log forked (its divergent tail starts there), which is found, reported and set aside,
-- never applied.
--
-- `slot` is always -1: the row is the shard's, not a slot's (digests list it under -1).
CREATE TABLE shard_history (
    pos         INTEGER PRIMARY KEY,
    slot        INTEGER NOT NULL,
    shard       TEXT NOT NULL,
    cell        TEXT NOT NULL,
    epoch       INTEGER NOT NULL,
    promoted_at INTEGER NOT NULL
);

CREATE TRIGGER journal_shard_history_ins AFTER INSERT ON shard_history
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot, 0,
            'row_upsert', 'shard_history', json_object('pos', NEW.pos, 'slot', NEW.slot, 'shard', NEW.shard, 'cell', NEW.cell, 'epoch', NEW.epoch, 'promoted_at', NEW.promoted_at), 0);
END;

CREATE TRIGGER journal_shard_history_upd AFTER UPDATE ON shard_history
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), NEW.slot, 0,
            'row_upsert', 'shard_history', json_object('pos', NEW.pos, 'slot', NEW.slot, 'shard', NEW.shard, 'cell', NEW.cell, 'epoch', NEW.epoch, 'promoted_at', NEW.promoted_at), 0);
END;

CREATE TRIGGER journal_shard_history_del AFTER DELETE ON shard_history
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    INSERT INTO journal (txn, slot, epoch, kind, entity_id, payload, created_at)
    VALUES ((SELECT pos + 1 FROM journal_head WHERE id = 1), OLD.slot, 0,
            'row_delete', 'shard_history', json_object('pos', OLD.pos, 'slot', OLD.slot, 'shard', OLD.shard, 'cell', OLD.cell, 'epoch', OLD.epoch, 'promoted_at', OLD.promoted_at), 0);
END;
