-- Forecasts made, one row per forecast_id (deterministic: kind, clock time,
-- horizon), so that making the same forecast again stores nothing new.
-- `event` is the ForecastEvent of lead-forecasts as JSON; `detail` the
-- whole result (breakdowns, quantiles, candidates) as JSON.
CREATE TABLE lead_forecasts (
    forecast_id   TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    generated_at  BIGINT NOT NULL,
    horizon_days  INTEGER NOT NULL,
    confidence    DOUBLE PRECISION NOT NULL,
    model_version TEXT,
    leads_counted BIGINT NOT NULL,
    event         TEXT NOT NULL,
    detail        TEXT NOT NULL
);
CREATE INDEX lead_forecasts_kind_time ON lead_forecasts (kind, generated_at);
