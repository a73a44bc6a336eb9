-- The web console (hxp.console): its sessions, and the indexes its pages read the usage log through.
-- A session is kept as an HMAC of its cookie (keyed from the master key) with its expiry; signing out deletes it.
CREATE TABLE IF NOT EXISTS console_sessions (
    session_hash VARCHAR(64) PRIMARY KEY,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    expires_at TIMESTAMP WITH TIME ZONE NOT NULL
);
-- Every model's traffic over a time window (overview, usage): the time alone.
CREATE INDEX IF NOT EXISTS llm_model_requests_time ON llm_model_requests (timestamp);
-- A key's last use and recent requests (keys page).
CREATE INDEX IF NOT EXISTS llm_model_requests_key_time ON llm_model_requests (key_id, timestamp);
