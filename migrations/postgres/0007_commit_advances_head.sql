-- Nothing to change on Postgres: its commit already takes its position in one statement (a
-- CTE that advances journal_head and inserts into journal_commits). This file keeps the two
-- dialects' migrations numbered alike; SQLite's 0007 folds its two statements into one.
SELECT 1;
