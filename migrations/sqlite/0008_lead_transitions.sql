-- Each lead's creation (seq 0) and each stage change (seq n: its n-th), one
-- row each, written in the batch transaction that applied them, so that the
-- analytics are SQL aggregates that are exact across crashes and replays.
-- owner and value are the transition's (the deal value of a stage change,
-- else the lead's estimate when it was written); source is the lead's.
CREATE TABLE lead_transitions (
    lead_ext_id TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    from_stage  TEXT,
    to_stage    TEXT NOT NULL,
    at          INTEGER NOT NULL,
    owner       TEXT,
    source      TEXT,
    value       REAL,
    event_id    TEXT,
    PRIMARY KEY (lead_ext_id, seq)
);
CREATE INDEX lead_transitions_to_at ON lead_transitions (to_stage, at);
CREATE INDEX lead_transitions_at ON lead_transitions (at);
