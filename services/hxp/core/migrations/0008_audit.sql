-- The audit trail (hxp.audit): one row per security-relevant event, append-only, hash-chained.
-- seq numbers the chain without gaps; hash = SHA-256 of the row's canonical content, prev_hash included.
-- A checkpoint row (action 'audit.checkpoint') stands for the rows a retention purge removed: its hash is the
-- hash of the last removed row, so the chain after it still verifies.
CREATE TABLE IF NOT EXISTS audit_events (
    seq BIGINT PRIMARY KEY,
    event_id VARCHAR(36) NOT NULL UNIQUE,
    at TIMESTAMP WITH TIME ZONE NOT NULL,
    actor VARCHAR(200) NOT NULL,
    client VARCHAR(64) NOT NULL DEFAULT '',
    action VARCHAR(64) NOT NULL,
    target VARCHAR(200) NOT NULL DEFAULT '',
    outcome VARCHAR(32) NOT NULL,
    request_id VARCHAR(64) NOT NULL DEFAULT '',
    count INTEGER NOT NULL DEFAULT 1,
    details TEXT NOT NULL DEFAULT '{}',
    prev_hash VARCHAR(64) NOT NULL,
    hash VARCHAR(64) NOT NULL
);
-- The search filters, each with the time: who did it, what, to what, and a time window alone.
CREATE INDEX IF NOT EXISTS audit_events_at ON audit_events (at);
CREATE INDEX IF NOT EXISTS audit_events_actor_at ON audit_events (actor, at);
CREATE INDEX IF NOT EXISTS audit_events_action_at ON audit_events (action, at);
CREATE INDEX IF NOT EXISTS audit_events_target_at ON audit_events (target, at);
-- The chain's head: the one row every append locks (SELECT ... FOR UPDATE on PostgreSQL, BEGIN IMMEDIATE on
-- SQLite), so that every worker, replica and command appends to one chain.
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash VARCHAR(64) NOT NULL,
    rows_kept BIGINT NOT NULL
);
INSERT INTO audit_head (id, seq, hash, rows_kept)
SELECT 1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 0
WHERE NOT EXISTS (SELECT 1 FROM audit_head WHERE id = 1);
