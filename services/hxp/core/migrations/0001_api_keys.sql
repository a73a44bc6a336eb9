-- API keys: only a hash of each secret is stored.
CREATE TABLE IF NOT EXISTS api_keys (
    key_id VARCHAR(36) PRIMARY KEY,
    key_hash VARCHAR(128) NOT NULL UNIQUE,
    key_prefix VARCHAR(16) NOT NULL,
    alias VARCHAR(100) NOT NULL UNIQUE,
    owner VARCHAR(100),
    allowed_models TEXT NOT NULL DEFAULT '*',
    rpm_limit INTEGER,
    tpm_limit INTEGER,
    expires_at TIMESTAMP WITH TIME ZONE,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    revoked_at TIMESTAMP WITH TIME ZONE
);
