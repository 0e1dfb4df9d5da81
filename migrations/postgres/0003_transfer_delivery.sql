-- Transfers to claimers homed in other cells are delivered over HTTP and retried with
-- backoff until acknowledged; delivered_to names the cell that acknowledged (NULL: local).
ALTER TABLE transfers ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE transfers ADD COLUMN next_attempt_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE transfers ADD COLUMN delivered_to TEXT;
