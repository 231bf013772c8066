-- Which forecasts the processor's schedule made (the others were asked for
-- with `leadflow forecast --record`): the schedule goes on from the latest
-- of its own.
ALTER TABLE lead_forecasts ADD COLUMN scheduled BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX lead_forecasts_scheduled ON lead_forecasts (scheduled, generated_at);
