//! The pure core: (states, events, clock) → (states, outputs). Nothing
//! here does I/O or reads the wall clock on its own; the edges (processor,
//! replay, import, tests, benchmarks) load states, call
//! [`apply::apply_batch`] and commit the result.
//!
//! Inside, dependencies run one way: [`ids`], [`slots`] and [`rules`] know
//! nothing of the others, [`state`] is plain data, [`nurture`] changes a state's
//! nurturing part, and [`apply`] puts it all together.

pub mod apply;
pub mod clock;
pub mod ids;
pub mod nurture;
pub mod rules;
pub mod slots;
pub mod state;

#[cfg(test)]
mod tests;
