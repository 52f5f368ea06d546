-- dtx barrier table (SQLite), in the participant's own database (DESIGN §5).
CREATE TABLE IF NOT EXISTS dtx_barrier (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    trans_type TEXT NOT NULL,
    gid        TEXT NOT NULL,
    branch_id  TEXT NOT NULL,
    op         TEXT NOT NULL,
    barrier_id TEXT NOT NULL,
    reason     TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    UNIQUE (gid, branch_id, op, barrier_id)
);
CREATE INDEX IF NOT EXISTS dtx_barrier_created ON dtx_barrier (created_at);
