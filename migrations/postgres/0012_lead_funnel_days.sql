-- The funnel's counts per creation day: leads created on a UTC day (days
-- since 1970-01-01) by the furthest step they entered and whether they were
-- lost. The commit path moves a lead's count from its old bucket to its new
-- one in the batch transaction that moves its lead_funnel row, so the
-- funnel of any run of whole days sums a few rows per day instead of
-- reading a row per lead.
CREATE TABLE lead_funnel_days (
    day      BIGINT NOT NULL,
    furthest INTEGER NOT NULL,
    lost     BOOLEAN NOT NULL,
    leads    BIGINT NOT NULL,
    PRIMARY KEY (day, furthest, lost)
);
INSERT INTO lead_funnel_days (day, furthest, lost, leads)
SELECT (created_at - ((created_at % 86400000) + 86400000) % 86400000) / 86400000,
    furthest, lost, COUNT(*)
FROM lead_funnel WHERE created_at IS NOT NULL
GROUP BY (created_at - ((created_at % 86400000) + 86400000) % 86400000) / 86400000, furthest, lost;
