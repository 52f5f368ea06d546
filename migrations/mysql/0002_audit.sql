-- Operator actions: who did what to which transaction, when and why.
CREATE TABLE IF NOT EXISTS dtx_audit (
    id     BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    at     BIGINT NOT NULL,
    actor  VARCHAR(128) NOT NULL,
    action VARCHAR(32) NOT NULL,
    gid    VARCHAR(128) NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT,
    KEY dtx_audit_gid (gid, id)
) ENGINE = InnoDB;
