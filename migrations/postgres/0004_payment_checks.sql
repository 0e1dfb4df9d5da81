-- C2C payments reach a final state by the callback, a delayed re-check and a sweep;
-- registered: the provider was told about the payment; a payment still pending at
-- deadline_at cancels its packet.
ALTER TABLE payments ADD COLUMN registered BIGINT NOT NULL DEFAULT 0;
ALTER TABLE payments ADD COLUMN next_check_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE payments ADD COLUMN deadline_at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX payments_pending ON payments (status, next_check_at);
