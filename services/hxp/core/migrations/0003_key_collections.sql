-- Vector collection grants per key: read (search, retrieval-augmented chat) and write (upsert, delete).
-- Existing and new keys read every collection and write none, unless granted.
ALTER TABLE api_keys ADD COLUMN read_collections TEXT NOT NULL DEFAULT '*';
ALTER TABLE api_keys ADD COLUMN write_collections TEXT NOT NULL DEFAULT '';
