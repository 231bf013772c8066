-- Nurturing timers. Each lead row says which input partition owns it and
-- when its next nurturing timer is due (a copy of state.nurture.timer), so a
-- processor finds the due timers of its partitions with an index range scan
-- instead of a sleeping task per lead or a table scan per tick.
ALTER TABLE leads ADD COLUMN partition_id INTEGER;
ALTER TABLE leads ADD COLUMN next_timer_at INTEGER;
CREATE INDEX leads_timers ON leads (partition_id, next_timer_at)
    WHERE next_timer_at IS NOT NULL;

-- One row per lead and experiment (A/B-tested sequence): its variant and
-- whether it replied and converted after entering. Written with the lead's
-- state; `leadflow experiments` aggregates it.
CREATE TABLE experiment_members (
    experiment   TEXT NOT NULL,
    lead_ext_id  TEXT NOT NULL,
    variant      TEXT NOT NULL,
    enrolled_at  INTEGER NOT NULL,
    replied_at   INTEGER,
    converted_at INTEGER,
    PRIMARY KEY (experiment, lead_ext_id)
);
