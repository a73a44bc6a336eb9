-- The Responses and Conversations APIs' state (hxp.gateway.conversations.store). Times are Unix seconds.
-- owner: 'owner:<ApiKey.owner>', 'key:<key_id>' for a key without an owner, or 'master'.
CREATE TABLE IF NOT EXISTS conversations (
    conversation_id VARCHAR(64) PRIMARY KEY,
    owner VARCHAR(140) NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    next_position INTEGER NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_updated ON conversations (updated_at);
-- One stored response. Its context: the chain of previous_response_id (each one's items, oldest first), or its
-- conversation's items before position history_end; session_id routes every turn to the same backend.
CREATE TABLE IF NOT EXISTS responses (
    response_id VARCHAR(64) PRIMARY KEY,
    owner VARCHAR(140) NOT NULL,
    session_id VARCHAR(64) NOT NULL,
    previous_response_id VARCHAR(64),
    conversation_id VARCHAR(64),
    history_end INTEGER,
    body TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at);
-- An item (message, function call or output): a response's input or output, a conversation's, or both.
-- position orders a conversation's items, or a response's own items when it has no conversation.
CREATE TABLE IF NOT EXISTS context_items (
    item_id VARCHAR(64) PRIMARY KEY,
    response_id VARCHAR(64),
    conversation_id VARCHAR(64),
    position INTEGER NOT NULL,
    is_output BOOLEAN NOT NULL DEFAULT FALSE,
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS context_items_response ON context_items (response_id, position);
CREATE INDEX IF NOT EXISTS context_items_conversation ON context_items (conversation_id, position);
