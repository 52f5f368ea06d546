-- dtx coordinator tables (MySQL 8 / MariaDB 10.6+). Times are milliseconds since the Unix
-- epoch (UTC), taken from the database clock.
CREATE TABLE IF NOT EXISTS dtx_global (
    gid             VARCHAR(128) NOT NULL PRIMARY KEY,
    trans_type      VARCHAR(16) NOT NULL,
    status          VARCHAR(16) NOT NULL,
    options         TEXT NOT NULL,
    query_prepared  TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    finished_at     BIGINT,
    timeout_at      BIGINT,
    next_attempt_at BIGINT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    lease_owner     VARCHAR(64),
    lease_until     BIGINT,
    version         BIGINT NOT NULL DEFAULT 1,
    needs_attention TEXT,
    rollback_reason TEXT,
    KEY dtx_global_due (next_attempt_at),
    KEY dtx_global_created (created_at, gid)
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS dtx_branch (
    gid                VARCHAR(128) NOT NULL,
    branch_id          VARCHAR(64) NOT NULL,
    op                 VARCHAR(16) NOT NULL,
    seq                BIGINT NOT NULL,
    target             TEXT NOT NULL,
    payload            LONGBLOB NOT NULL,
    status             VARCHAR(16) NOT NULL,
    attempts           BIGINT NOT NULL DEFAULT 0,
    next_at            BIGINT NOT NULL DEFAULT 0,
    last_error         TEXT,
    retry_limit        BIGINT,
    request_timeout_ms BIGINT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    PRIMARY KEY (gid, branch_id, op)
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS dtx_attempt (
    id          BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    gid         VARCHAR(128) NOT NULL,
    branch_id   VARCHAR(64) NOT NULL,
    op          VARCHAR(16) NOT NULL,
    started_at  BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    outcome     VARCHAR(16) NOT NULL,
    error       TEXT,
    owner       VARCHAR(64) NOT NULL,
    KEY dtx_attempt_gid (gid, id)
) ENGINE = InnoDB;
