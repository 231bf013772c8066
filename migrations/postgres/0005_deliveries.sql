-- The delivery worker's ledger (`leadflow notify`): one row per message_id.
-- A worker claims a message (status 'sending', owner, claimed_until) before
-- it calls the provider and records the outcome after, so a redelivered
-- message is skipped and two workers never send it at once. The recipient is
-- kept only as a hash (for the per-recipient cap), not as an address.
CREATE TABLE deliveries (
    message_id          TEXT PRIMARY KEY,
    lead_ext_id         TEXT NOT NULL,
    channel             TEXT NOT NULL,
    template            TEXT NOT NULL,
    recipient_hash      TEXT NOT NULL,
    status              TEXT NOT NULL,
    owner               TEXT NOT NULL,
    claimed_until       BIGINT NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    provider_message_id TEXT,
    reason              TEXT,
    reported            BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at          BIGINT NOT NULL
);
CREATE INDEX deliveries_recipient ON deliveries (recipient_hash, updated_at);
