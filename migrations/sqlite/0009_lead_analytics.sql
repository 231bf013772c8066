-- The daily history of the analytics: one row per UTC day (days since
-- 1970-01-01), metric and dimension, written once the processor's clock has
-- passed the day (src/analytics/history.rs says which rows a day has).
CREATE TABLE lead_analytics (
    day             INTEGER NOT NULL,
    metric          TEXT NOT NULL,
    dimension       TEXT NOT NULL,
    dimension_value TEXT NOT NULL,
    value           REAL NOT NULL,
    PRIMARY KEY (day, metric, dimension, dimension_value)
);
