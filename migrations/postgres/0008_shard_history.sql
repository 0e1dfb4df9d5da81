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
    pos         BIGINT PRIMARY KEY,
    slot        BIGINT NOT NULL,
    shard       TEXT NOT NULL,
    cell        TEXT NOT NULL,
    epoch       BIGINT NOT NULL,
    promoted_at BIGINT NOT NULL
);

CREATE TRIGGER journal_shard_history AFTER INSERT OR UPDATE OR DELETE ON shard_history
    FOR EACH ROW EXECUTE FUNCTION redcell_journal_row();
