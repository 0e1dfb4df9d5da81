-- The cell's shard. Money is BIGINT cents; times are BIGINT milliseconds since the epoch.
-- Every row that belongs to a slot records it, so slots can move between cells later.

CREATE TABLE subsidies (
    subsidy_id  TEXT PRIMARY KEY,
    slot        BIGINT NOT NULL,
    grant_id    TEXT NOT NULL UNIQUE,
    uid         TEXT NOT NULL,
    amount      BIGINT NOT NULL CHECK (amount > 0),
    status      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    packet_id   TEXT
);
CREATE INDEX subsidies_uid ON subsidies (uid, created_at);
CREATE INDEX subsidies_due ON subsidies (status, expires_at);

CREATE TABLE packets (
    packet_id        TEXT PRIMARY KEY,
    slot             BIGINT NOT NULL,
    sender           TEXT NOT NULL,
    kind             TEXT NOT NULL,
    total            BIGINT NOT NULL CHECK (total > 0),
    count            BIGINT NOT NULL CHECK (count > 0),
    remaining_amount BIGINT NOT NULL CHECK (remaining_amount >= 0),
    remaining_count  BIGINT NOT NULL CHECK (remaining_count >= 0),
    refunded_amount  BIGINT NOT NULL DEFAULT 0,
    status           TEXT NOT NULL,
    greeting         TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    subsidy_id       TEXT,
    payment_id       TEXT
);
CREATE INDEX packets_sender ON packets (sender, created_at);
CREATE INDEX packets_due ON packets (status, expires_at);

CREATE TABLE payments (
    payment_id  TEXT PRIMARY KEY,
    slot        BIGINT NOT NULL,
    packet_id   TEXT NOT NULL,
    amount      BIGINT NOT NULL,
    status      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE claims (
    claim_id        TEXT PRIMARY KEY,
    slot            BIGINT NOT NULL,
    packet_id       TEXT NOT NULL,
    uid             TEXT NOT NULL,
    amount          BIGINT NOT NULL CHECK (amount > 0),
    claimed_at      BIGINT NOT NULL,
    remaining_count BIGINT NOT NULL,
    transfer_id     TEXT NOT NULL,
    UNIQUE (packet_id, uid)
);
CREATE INDEX claims_uid ON claims (uid, claimed_at);

CREATE TABLE transfers (
    transfer_id  TEXT PRIMARY KEY,
    slot         BIGINT NOT NULL,
    claim_id     TEXT NOT NULL,
    packet_id    TEXT NOT NULL,
    to_uid       TEXT NOT NULL,
    amount       BIGINT NOT NULL,
    status       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    completed_at BIGINT
);
CREATE INDEX transfers_pending ON transfers (status, created_at);

CREATE TABLE wallets (
    uid     TEXT PRIMARY KEY,
    slot    BIGINT NOT NULL,
    balance BIGINT NOT NULL
);

-- One row per credit ever applied: the primary key makes every credit happen once.
CREATE TABLE wallet_credits (
    source_id  TEXT PRIMARY KEY,
    slot       BIGINT NOT NULL,
    uid        TEXT NOT NULL,
    amount     BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Money handed back to the activity system: expired subsidies and B2C refunds.
CREATE TABLE pool_returns (
    source_id  TEXT PRIMARY KEY,
    slot       BIGINT NOT NULL,
    amount     BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE idem_uid (
    uid           TEXT NOT NULL,
    operation     TEXT NOT NULL,
    idem_key      TEXT NOT NULL,
    slot          BIGINT NOT NULL,
    request_hash  TEXT NOT NULL,
    status_code   BIGINT NOT NULL,
    response_body TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (uid, operation, idem_key)
);

CREATE TABLE idem_order (
    order_id   TEXT NOT NULL,
    operation  TEXT NOT NULL,
    slot       BIGINT NOT NULL,
    uid        TEXT NOT NULL,
    state      TEXT NOT NULL,
    result     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (order_id, operation)
);

CREATE TABLE journal (
    seq        BIGSERIAL PRIMARY KEY,
    slot       BIGINT NOT NULL,
    kind       TEXT NOT NULL,
    entity_id  TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE worker_cursors (
    worker TEXT PRIMARY KEY,
    seq    BIGINT NOT NULL
);

CREATE INDEX transfers_packet ON transfers (packet_id);
