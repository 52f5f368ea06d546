-- Consumer inbox: one row per record a consumer applied (its dedupe key).
CREATE TABLE IF NOT EXISTS dtx_inbox (
    consumer   VARCHAR(128) NOT NULL,
    gid        VARCHAR(128) NOT NULL,
    branch_id  VARCHAR(64) NOT NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (consumer, gid, branch_id)
) ENGINE = InnoDB;
-- Transactional outbox: messages written with the business change, published by a relay.
CREATE TABLE IF NOT EXISTS dtx_outbox (
    id         BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    msg_id     VARCHAR(128) NOT NULL UNIQUE,
    topic      VARCHAR(249) NOT NULL,
    msg_key    VARCHAR(512) NOT NULL,
    payload    LONGBLOB NOT NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    sent_at    DATETIME(3) NULL,
    KEY dtx_outbox_unsent (sent_at, id)
) ENGINE = InnoDB;
