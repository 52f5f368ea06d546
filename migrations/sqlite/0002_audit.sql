-- Operator actions: who did what to which transaction, when and why.
CREATE TABLE IF NOT EXISTS dtx_audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    gid    TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS dtx_audit_gid ON dtx_audit (gid, id);
