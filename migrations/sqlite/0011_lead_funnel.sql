-- Each lead's place in the funnel, kept with its transitions in the batch
-- transaction: when it was created (its creation transition), the furthest
-- funnel step it entered (0 new .. 5 closed_won; -1 before any), and
-- whether it was lost. The funnel of a creation cohort is then one indexed
-- aggregate over this table instead of a join over every transition.
CREATE TABLE lead_funnel (
    lead_ext_id TEXT PRIMARY KEY,
    created_at  INTEGER,
    furthest    INTEGER NOT NULL,
    lost        BOOLEAN NOT NULL
);
-- Covering: the funnel reads the index alone.
CREATE INDEX lead_funnel_created ON lead_funnel (created_at, furthest, lost);
INSERT INTO lead_funnel (lead_ext_id, created_at, furthest, lost)
SELECT lead_ext_id,
    MAX(CASE WHEN seq = 0 THEN at END),
    MAX(CASE to_stage WHEN 'new' THEN 0 WHEN 'contacted' THEN 1 WHEN 'qualified' THEN 2
        WHEN 'proposal' THEN 3 WHEN 'negotiation' THEN 4 WHEN 'closed_won' THEN 5 ELSE -1 END),
    MAX(CASE WHEN to_stage = 'closed_lost' THEN 1 ELSE 0 END) = 1
FROM lead_transitions GROUP BY lead_ext_id;
