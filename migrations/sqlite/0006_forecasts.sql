-- Forecasts made, one row per forecast_id (deterministic: kind, clock time,
-- horizon), so that making the same forecast again stores nothing new.
-- `event` is the ForecastEvent of lead-forecasts as JSON; `detail` the
-- whole result (breakdowns, quantiles, candidates) as JSON.
CREATE TABLE lead_forecasts (
    forecast_id   TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    generated_at  INTEGER NOT NULL,
    horizon_days  INTEGER NOT NULL,
    confidence    REAL NOT NULL,
    model_version TEXT,
    leads_counted INTEGER NOT NULL,
    event         TEXT NOT NULL,
    detail        TEXT NOT NULL
);
CREATE INDEX lead_forecasts_kind_time ON lead_forecasts (kind, generated_at);
