-- One usage row may stand for several refusals of the same minute, model, status and key (aggregated beyond
-- HXP_USAGE_REFUSAL_ROWS_PER_MIN): whatever counts requests sums request_count instead of counting rows.
ALTER TABLE llm_model_requests ADD COLUMN request_count INTEGER NOT NULL DEFAULT 1;
