-- REST API keys (`leadflow apikey`): the key is shown once at creation;
-- only its SHA-256 is kept. key_id is the key's public part, the lookup.
CREATE TABLE api_keys (
    key_id     TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    scope      TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
-- GET /api/v1/leads sorts by score; a lead's timeline lists its deliveries.
CREATE INDEX leads_final_score ON leads (final_score);
CREATE INDEX deliveries_lead ON deliveries (lead_ext_id, updated_at);
