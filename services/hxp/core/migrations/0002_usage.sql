-- One row per request answered (success or failure), and per-model rollups.
CREATE TABLE IF NOT EXISTS llm_model_requests (
    request_id UUID PRIMARY KEY,
    model_name VARCHAR(100) NOT NULL,
    timestamp TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    user_id VARCHAR(100),
    key_id VARCHAR(36),
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    total_tokens INTEGER,
    latency_ms INTEGER,
    time_to_first_token_ms INTEGER,
    stream BOOLEAN NOT NULL DEFAULT FALSE,
    cache_hit BOOLEAN NOT NULL DEFAULT FALSE,
    cost DOUBLE PRECISION,
    status VARCHAR(20),
    error_message TEXT
);
CREATE INDEX IF NOT EXISTS llm_model_requests_model_time ON llm_model_requests (model_name, timestamp);
CREATE TABLE IF NOT EXISTS llm_model_performance (
    metric_id UUID PRIMARY KEY,
    model_name VARCHAR(100) NOT NULL,
    timestamp TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT CURRENT_TIMESTAMP,
    avg_latency_ms DOUBLE PRECISION,
    requests_per_second DOUBLE PRECISION,
    memory_usage_gb DOUBLE PRECISION,
    cpu_utilization DOUBLE PRECISION,
    error_rate DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS llm_model_performance_model_time ON llm_model_performance (model_name, timestamp);
