-- dtx coordinator tables (PostgreSQL). Times are milliseconds since the Unix epoch (UTC),
-- taken from the database clock.
CREATE TABLE IF NOT EXISTS dtx_global (
    gid             TEXT PRIMARY KEY NOT NULL,
    trans_type      TEXT NOT NULL,
    status          TEXT NOT NULL,
    options         TEXT NOT NULL,
    query_prepared  TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    finished_at     BIGINT,
    timeout_at      BIGINT,
    next_attempt_at BIGINT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_until     BIGINT,
    version         BIGINT NOT NULL DEFAULT 1,
    needs_attention TEXT,
    rollback_reason TEXT
);
-- The poller's scan: only rows with something scheduled are indexed.
CREATE INDEX IF NOT EXISTS dtx_global_due ON dtx_global (next_attempt_at) WHERE next_attempt_at IS NOT NULL;
-- Listings, newest first, with keyset paging.
CREATE INDEX IF NOT EXISTS dtx_global_created ON dtx_global (created_at, gid);

CREATE TABLE IF NOT EXISTS dtx_branch (
    gid                TEXT NOT NULL,
    branch_id          TEXT NOT NULL,
    op                 TEXT NOT NULL,
    seq                BIGINT NOT NULL,
    target             TEXT NOT NULL,
    payload            BYTEA NOT NULL,
    status             TEXT NOT NULL,
    attempts           BIGINT NOT NULL DEFAULT 0,
    next_at            BIGINT NOT NULL DEFAULT 0,
    last_error         TEXT,
    retry_limit        BIGINT,
    request_timeout_ms BIGINT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    PRIMARY KEY (gid, branch_id, op)
);

-- Every participant call: when, how long, what came back.
CREATE TABLE IF NOT EXISTS dtx_attempt (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    gid         TEXT NOT NULL,
    branch_id   TEXT NOT NULL,
    op          TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    outcome     TEXT NOT NULL,
    error       TEXT,
    owner       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dtx_attempt_gid ON dtx_attempt (gid, id);
