-- Usage reports (`hxp usage report`) and `hxp status` read a time window across every model and key:
-- an index on the time alone (the (model_name, timestamp) index serves one model's window only).
CREATE INDEX IF NOT EXISTS llm_model_requests_time ON llm_model_requests (timestamp);
