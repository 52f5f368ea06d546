-- The dashboard's "needs attention" list and the gauges: parked transactions are few, so a
-- partial index finds them without reading the final ones.
CREATE INDEX IF NOT EXISTS dtx_global_attention ON dtx_global (created_at, gid) WHERE needs_attention IS NOT NULL;
