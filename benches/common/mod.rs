//! Shared by the benchmarks.

/// A size from the environment, else `measuring` under `cargo bench` (which
/// passes --bench) and `smoke` under `cargo test --bench`, where a small
/// run keeps the benchmark's code honest without costing minutes.
pub fn env_or<T: std::str::FromStr>(name: &str, measuring: T, smoke: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if std::env::args().any(|a| a == "--bench") {
            measuring
        } else {
            smoke
        })
}
