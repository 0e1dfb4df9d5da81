-- The packet a credit came from: a user's received history is read in their home cell,
-- where the credits are, not in the packets' cells.
ALTER TABLE wallet_credits ADD COLUMN packet_id TEXT;
CREATE INDEX wallet_credits_uid_time ON wallet_credits (uid, created_at);
