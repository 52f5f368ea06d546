-- Consumer inbox: one row per record a consumer applied (its dedupe key).
CREATE TABLE IF NOT EXISTS dtx_inbox (
    consumer   TEXT NOT NULL,
    gid        TEXT NOT NULL,
    branch_id  TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, gid, branch_id)
);
-- Transactional outbox: messages written with the business change, published by a relay.
CREATE TABLE IF NOT EXISTS dtx_outbox (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    msg_id     TEXT NOT NULL UNIQUE,
    topic      TEXT NOT NULL,
    msg_key    TEXT NOT NULL,
    payload    BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at    TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS dtx_outbox_unsent ON dtx_outbox (id) WHERE sent_at IS NULL;
