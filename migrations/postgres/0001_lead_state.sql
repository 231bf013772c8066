-- Lead state. The full state is the JSON document in `state` (LeadState in
-- src/lead.rs); the other columns are copies of a few fields for queries
-- and indexes, rewritten with every state change.
CREATE TABLE leads (
    lead_ext_id      TEXT PRIMARY KEY,
    state            TEXT NOT NULL,
    email            TEXT,
    source           TEXT,
    owner            TEXT,
    stage            TEXT NOT NULL,
    stage_entered_at BIGINT,
    segment          TEXT,
    final_score      DOUBLE PRECISION,
    created_at       BIGINT,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX leads_stage ON leads (stage);
CREATE INDEX leads_owner ON leads (owner);
CREATE INDEX leads_source ON leads (source);

-- Next offset to consume per consumer group and input partition, written in
-- the same transaction as the state it produced.
CREATE TABLE partition_offsets (
    consumer_group TEXT NOT NULL,
    topic          TEXT NOT NULL,
    partition_id   INTEGER NOT NULL,
    next_offset    BIGINT NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition_id)
);
