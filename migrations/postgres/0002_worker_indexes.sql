-- Workers read the journal by kind from their cursor; reconciliation sums credits per user.
CREATE INDEX journal_kind_seq ON journal (kind, seq);
CREATE INDEX wallet_credits_uid ON wallet_credits (uid);
