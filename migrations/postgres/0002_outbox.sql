-- Output events waiting to be published, written in the same transaction as
-- the state and offsets that produced them (the transactional outbox). The
-- relay publishes them in seq order per source partition and deletes them
-- once the broker has acknowledged them.
CREATE TABLE outbox (
    seq              BIGSERIAL PRIMARY KEY,
    output_id        TEXT NOT NULL UNIQUE,
    topic            TEXT NOT NULL,
    message_key      TEXT NOT NULL,
    -- The output as JSON; encoded to the wire format when published, so the
    -- schema registry is never needed inside the state transaction.
    payload          TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    created_at       BIGINT NOT NULL
);
CREATE INDEX outbox_partition_seq ON outbox (source_partition, seq);
