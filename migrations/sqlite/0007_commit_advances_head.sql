-- A commit's position tail in one statement (DESIGN §6.2): inserting the commit's row in
-- `journal_commits` advances `journal_head` in the same statement, where before the writer
-- sent a second statement (on SQLite every statement is a hand-off to the connection's
-- thread and back). Only for the primary's own commits: a replica's applying transaction
-- (`applying = 1`) copies commits verbatim and sets the head itself.
CREATE TRIGGER journal_commits_advance_head AFTER INSERT ON journal_commits
WHEN (SELECT applying FROM journal_head WHERE id = 1) = 0
BEGIN
    UPDATE journal_head SET pos = NEW.pos WHERE id = 1;
END;
