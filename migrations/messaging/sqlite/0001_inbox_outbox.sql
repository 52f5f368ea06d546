-- Consumer inbox: one row per record a consumer applied (its dedupe key).
CREATE TABLE IF NOT EXISTS dtx_inbox (
    consumer   TEXT NOT NULL,
    gid        TEXT NOT NULL,
    branch_id  TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    PRIMARY KEY (consumer, gid, branch_id)
);
-- Transactional outbox: messages written with the business change, published by a relay.
CREATE TABLE IF NOT EXISTS dtx_outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id     TEXT NOT NULL UNIQUE,
    topic      TEXT NOT NULL,
    msg_key    TEXT NOT NULL,
    payload    BLOB NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    sent_at    TEXT
);
CREATE INDEX IF NOT EXISTS dtx_outbox_unsent ON dtx_outbox (id) WHERE sent_at IS NULL;
