//! Forecasts over what the processor already holds, as pure functions of
//! data (no store, no clock): leads to be created per day
//! ([`lead_generation`]) from a [`series::DailySeries`]. The methods, their
//! assumptions and what an interval's level means: `docs/FORECASTING.md`.

pub mod lead_generation;
pub mod series;
