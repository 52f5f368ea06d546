-- dtx barrier table (MySQL 8 / MariaDB 10.6+), in the participant's own database (DESIGN §5).
CREATE TABLE IF NOT EXISTS dtx_barrier (
    id         BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    trans_type VARCHAR(16) NOT NULL,
    gid        VARCHAR(128) NOT NULL,
    branch_id  VARCHAR(64) NOT NULL,
    op         VARCHAR(16) NOT NULL,
    barrier_id VARCHAR(16) NOT NULL,
    reason     VARCHAR(16) NOT NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    UNIQUE KEY dtx_barrier_uniq (gid, branch_id, op, barrier_id),
    KEY dtx_barrier_created (created_at)
) ENGINE = InnoDB;
