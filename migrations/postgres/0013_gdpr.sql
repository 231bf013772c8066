-- GDPR (docs/GDPR.md). Who asked for an erasure or an export of which lead,
-- when and why, and when the processor applied the erasure. No personal data:
-- the lead is named by its id, which its tombstone in `leads` keeps too.
CREATE TABLE gdpr_audit (
    id          BIGSERIAL PRIMARY KEY,
    -- erase_requested (CLI or API), erased (applied by the processor), exported
    action      TEXT NOT NULL,
    lead_ext_id TEXT NOT NULL,
    at          BIGINT NOT NULL,
    -- an API key id, cli:<user>, or processor
    actor       TEXT NOT NULL,
    reason      TEXT,
    -- the erasure event (requested and applied rows share it)
    event_id    TEXT
);
CREATE INDEX gdpr_audit_lead ON gdpr_audit (lead_ext_id, at);
-- An erasure drops the lead's unpublished outputs from the outbox.
CREATE INDEX outbox_key ON outbox (message_key);
-- When the lead was erased (a copy of LeadState.erased_at, like the columns
-- above it): erased leads are not listed or counted, and retention skips them.
ALTER TABLE leads ADD COLUMN erased_at BIGINT;
CREATE INDEX leads_active_by_update ON leads (partition_id, updated_at) WHERE erased_at IS NULL;
-- Crypto-shredding (gdpr::shredding): each lead's data key, wrapped by the
-- master key; NULL once the lead was erased, so that its messages still on
-- a topic cannot be read.
CREATE TABLE lead_keys (
    lead_ext_id TEXT PRIMARY KEY,
    wrapped_key TEXT,
    created_at  BIGINT NOT NULL,
    shredded_at BIGINT
);
