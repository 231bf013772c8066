//! Forecasts over what the processor already holds, as pure functions of
//! data (no store, no clock): leads to be created per day
//! ([`lead_generation`]) from a [`series::DailySeries`], how long leads take
//! to close ([`time_to_close`]) and what the open pipeline is worth
//! ([`pipeline_value`]) from lead states as of a given time; [`event`] makes
//! them the `ForecastEvent`s of `lead-forecasts`, and [`scheduled`] makes
//! all three as of one time, as the processor's schedule does. The methods,
//! their assumptions and what an interval's level means:
//! `docs/FORECASTING.md`.

pub mod event;
pub mod lead_generation;
pub mod pipeline_value;
pub mod scheduled;
pub mod series;
pub mod time_to_close;
