-- The cell's shard. Money is INTEGER cents; times are INTEGER milliseconds since the epoch.
-- Every row that belongs to a slot records it, so slots can move between cells later.

CREATE TABLE subsidies (
    subsidy_id  TEXT PRIMARY KEY,
    slot        INTEGER NOT NULL,
    grant_id    TEXT NOT NULL UNIQUE,
    uid         TEXT NOT NULL,
    amount      INTEGER NOT NULL CHECK (amount > 0),
    status      TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    packet_id   TEXT
);
CREATE INDEX subsidies_uid ON subsidies (uid, created_at);
CREATE INDEX subsidies_due ON subsidies (status, expires_at);

CREATE TABLE packets (
    packet_id        TEXT PRIMARY KEY,
    slot             INTEGER NOT NULL,
    sender           TEXT NOT NULL,
    kind             TEXT NOT NULL,
    total            INTEGER NOT NULL CHECK (total > 0),
    count            INTEGER NOT NULL CHECK (count > 0),
    remaining_amount INTEGER NOT NULL CHECK (remaining_amount >= 0),
    remaining_count  INTEGER NOT NULL CHECK (remaining_count >= 0),
    refunded_amount  INTEGER NOT NULL DEFAULT 0,
    status           TEXT NOT NULL,
    greeting         TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    subsidy_id       TEXT,
    payment_id       TEXT
);
CREATE INDEX packets_sender ON packets (sender, created_at);
CREATE INDEX packets_due ON packets (status, expires_at);

CREATE TABLE payments (
    payment_id  TEXT PRIMARY KEY,
    slot        INTEGER NOT NULL,
    packet_id   TEXT NOT NULL,
    amount      INTEGER NOT NULL,
    status      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE claims (
    claim_id        TEXT PRIMARY KEY,
    slot            INTEGER NOT NULL,
    packet_id       TEXT NOT NULL,
    uid             TEXT NOT NULL,
    amount          INTEGER NOT NULL CHECK (amount > 0),
    claimed_at      INTEGER NOT NULL,
    remaining_count INTEGER NOT NULL,
    transfer_id     TEXT NOT NULL,
    UNIQUE (packet_id, uid)
);
CREATE INDEX claims_uid ON claims (uid, claimed_at);

CREATE TABLE transfers (
    transfer_id  TEXT PRIMARY KEY,
    slot         INTEGER NOT NULL,
    claim_id     TEXT NOT NULL,
    packet_id    TEXT NOT NULL,
    to_uid       TEXT NOT NULL,
    amount       INTEGER NOT NULL,
    status       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    completed_at INTEGER
);
CREATE INDEX transfers_pending ON transfers (status, created_at);

CREATE TABLE wallets (
    uid     TEXT PRIMARY KEY,
    slot    INTEGER NOT NULL,
    balance INTEGER NOT NULL
);

-- One row per credit ever applied: the primary key makes every credit happen once.
CREATE TABLE wallet_credits (
    source_id  TEXT PRIMARY KEY,
    slot       INTEGER NOT NULL,
    uid        TEXT NOT NULL,
    amount     INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- Money handed back to the activity system: expired subsidies and B2C refunds.
CREATE TABLE pool_returns (
    source_id  TEXT PRIMARY KEY,
    slot       INTEGER NOT NULL,
    amount     INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE idem_uid (
    uid           TEXT NOT NULL,
    operation     TEXT NOT NULL,
    idem_key      TEXT NOT NULL,
    slot          INTEGER NOT NULL,
    request_hash  TEXT NOT NULL,
    status_code   INTEGER NOT NULL,
    response_body TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (uid, operation, idem_key)
);

CREATE TABLE idem_order (
    order_id   TEXT NOT NULL,
    operation  TEXT NOT NULL,
    slot       INTEGER NOT NULL,
    uid        TEXT NOT NULL,
    state      TEXT NOT NULL,
    result     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (order_id, operation)
);

CREATE TABLE journal (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    slot       INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    entity_id  TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE worker_cursors (
    worker TEXT PRIMARY KEY,
    seq    INTEGER NOT NULL
);

CREATE INDEX transfers_packet ON transfers (packet_id);
