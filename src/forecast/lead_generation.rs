//! Leads to be created over the next days, with intervals whose coverage is
//! measured rather than assumed.
//!
//! Several point forecasters (and their mean) compete on the series' own
//! recent past: each is refitted at every one of the last (up to) 56 daily
//! origins and forecasts the horizon from there; the one with the smallest mean
//! absolute error wins (ties go to the simpler, listed first). The winner's
//! errors at those origins, per step ahead, give the intervals (split
//! conformal): an error is divided by √(forecast + 1) first, because count
//! noise grows with the count, so a busy Monday gets a wider interval than a
//! quiet Sunday and a growing series keeps its coverage.
//!
//! One file past 600 lines: the candidates, the choice among them and the
//! calibration are one procedure read together (the choice and the
//! intervals rest on the same origins), and its tests are a fifth of it.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::series::DailySeries;

/// Days in the seasonal cycle of lead inflow (people work weekdays).
const SEASON: usize = 7;
/// History a forecaster needs before its first forecast.
const MIN_FIT_DAYS: usize = 4 * SEASON;
/// Daily origins the candidates are compared and the intervals calibrated on.
const MAX_ORIGINS: usize = 8 * SEASON;
/// Fewer origins than this cannot place a 95% interval's tails.
const MIN_ORIGINS: usize = 20;
const MAX_HORIZON: usize = 366;

crate::events::string_enum!(
    /// A point forecaster; declared simplest first, so a tie goes to the
    /// earlier.
    Method {
        SeasonalNaive => "seasonal_naive",
        SeasonalMean => "seasonal_mean",
        WeekdayTrend => "weekday_trend",
        WeekdayTrends => "weekday_trends",
        HoltWinters => "holt_winters",
        HoltWintersMultiplicative => "holt_winters_multiplicative",
        Combined => "combined",
    }
);

/// The windows [`Method::WeekdayTrends`] averages the weekday-trend lines
/// of: two months to a year (a history shorter than a window gives all of
/// itself to it).
const TREND_WINDOWS_WEEKS: [usize; 4] = [8, 16, 26, 52];

/// What [`Method::Combined`] averages: every forecaster that fits more
/// than the last week.
const COMBINED: [Method; 4] = [
    Method::SeasonalMean,
    Method::WeekdayTrend,
    Method::HoltWinters,
    Method::HoltWintersMultiplicative,
];

impl Method {
    /// Forecasts of the `horizon` days after `history`, never below zero.
    /// Day `t` of `history` falls on weekday `t % 7` of the series.
    pub fn predict(self, history: &[f64], horizon: usize) -> Vec<f64> {
        let forecast = match self {
            Method::SeasonalNaive => seasonal_mean(history, horizon, 1),
            Method::SeasonalMean => seasonal_mean(history, horizon, 4),
            Method::WeekdayTrend => weekday_trend(history, horizon, 8),
            // A line fitted over a short window follows a change soon but
            // is noisy; over a long one it is steady but late. Their mean
            // over several windows often errs less than any one of them,
            // and needs no choice of window (Pesaran and Pick, "Forecast
            // combination across estimation windows", 2011).
            Method::WeekdayTrends => mean_forecast(
                horizon,
                TREND_WINDOWS_WEEKS.map(|weeks| {
                    let line = weekday_trend(history, horizon, weeks);
                    line.into_iter().map(|v| v.max(0.0)).collect()
                }),
            ),
            Method::HoltWinters => holt_winters(history, horizon, Season::Additive),
            Method::HoltWintersMultiplicative => {
                holt_winters(history, horizon, Season::Multiplicative)
            }
            // The mean of several forecasters errs less than most of them on
            // most series (the M-competitions' lesson); it competes like
            // the others, so a series that one of them fits best keeps it.
            Method::Combined => mean_forecast(
                horizon,
                COMBINED.map(|method| method.predict(history, horizon)),
            ),
        };
        forecast.into_iter().map(|v| v.max(0.0)).collect()
    }
}

/// Day by day, the mean of `N` forecasts of `horizon` days.
fn mean_forecast<const N: usize>(horizon: usize, forecasts: [Vec<f64>; N]) -> Vec<f64> {
    let mut sum = vec![0.0; horizon];
    for forecast in forecasts {
        for (s, p) in sum.iter_mut().zip(forecast) {
            *s += p;
        }
    }
    sum.into_iter().map(|s| s / N as f64).collect()
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interval {
    pub level: f64,
    pub lower: f64,
    pub upper: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayForecast {
    pub date: NaiveDate,
    pub expected: f64,
    /// One per requested level, in the order asked.
    pub intervals: Vec<Interval>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub method: Method,
    /// Mean absolute error over the origins, scaled by the series'
    /// in-sample seasonal-naive error (MASE).
    pub mase: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeadGenerationForecast {
    pub method: Method,
    pub days: Vec<DayForecast>,
    pub candidates: Vec<Candidate>,
    /// Origins the choice and the intervals rest on.
    pub origins: usize,
}

impl LeadGenerationForecast {
    /// Leads expected over the whole horizon.
    pub fn expected_total(&self) -> f64 {
        self.days.iter().map(|d| d.expected).sum()
    }

    /// One row per day: `date,forecast`, then `lower_<L>,upper_<L>` per
    /// level in percent (`lower_80,upper_80,lower_95,upper_95` for the
    /// levels 0.8 and 0.95).
    pub fn write_csv(&self, output: impl std::io::Write) -> Result<(), csv::Error> {
        let mut writer = csv::Writer::from_writer(output);
        let mut header = vec!["date".to_string(), "forecast".to_string()];
        if let Some(first) = self.days.first() {
            for interval in &first.intervals {
                let percent = format!("{}", (interval.level * 1000.0).round() / 10.0);
                header.push(format!("lower_{percent}"));
                header.push(format!("upper_{percent}"));
            }
        }
        writer.write_record(&header)?;
        for day in &self.days {
            let mut row = vec![day.date.to_string(), format!("{:.3}", day.expected)];
            for interval in &day.intervals {
                row.push(format!("{:.3}", interval.lower));
                row.push(format!("{:.3}", interval.upper));
            }
            writer.write_record(&row)?;
        }
        writer.flush()?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LeadGenerationError {
    #[error(
        "the series has {days} days; forecasting {horizon} days ahead with calibrated intervals \
         needs at least {needed} (four weeks to fit, then {MIN_ORIGINS} past forecasts of \
         {horizon} days to check the intervals on)"
    )]
    TooShort {
        days: usize,
        horizon: usize,
        needed: usize,
    },
    #[error("the horizon must be 1 to {MAX_HORIZON} days, not {0}")]
    Horizon(usize),
    #[error("a confidence level must be above 0 and below 1, not {0}")]
    Level(f64),
}

/// The shortest series [`forecast`] accepts for `horizon`.
pub fn min_days(horizon: usize) -> usize {
    MIN_FIT_DAYS + horizon + MIN_ORIGINS - 1
}

/// The next `horizon` days after `series`, with an interval per level.
pub fn forecast(
    series: &DailySeries,
    horizon: usize,
    levels: &[f64],
) -> Result<LeadGenerationForecast, LeadGenerationError> {
    if horizon == 0 || horizon > MAX_HORIZON {
        return Err(LeadGenerationError::Horizon(horizon));
    }
    if let Some(level) = levels.iter().find(|l| !(**l > 0.0 && **l < 1.0)) {
        return Err(LeadGenerationError::Level(*level));
    }
    let y = &series.counts;
    let n = y.len();
    if n < min_days(horizon) {
        return Err(LeadGenerationError::TooShort {
            days: n,
            horizon,
            needed: min_days(horizon),
        });
    }
    let origin_count = (n - horizon - MIN_FIT_DAYS + 1).min(MAX_ORIGINS);
    let origins: Vec<usize> = (n - horizon + 1 - origin_count..=n - horizon).collect();
    let scale = seasonal_naive_scale(y);

    let mut best: Option<(Method, f64, Vec<Vec<f64>>)> = None;
    let mut candidates = Vec::new();
    for &method in Method::ALL {
        // Per step ahead, the scaled errors over the origins.
        let mut scaled = vec![Vec::with_capacity(origins.len()); horizon];
        let mut absolute = 0.0;
        for &origin in &origins {
            let predicted = method.predict(&y[..origin], horizon);
            for (h, p) in predicted.iter().enumerate() {
                let error = y[origin + h] - p;
                absolute += error.abs();
                scaled[h].push(error / (p + 1.0).sqrt());
            }
        }
        let mae = absolute / (origins.len() * horizon) as f64;
        candidates.push(Candidate {
            method,
            mase: mae / scale,
        });
        if best.as_ref().is_none_or(|(_, m, _)| mae < *m) {
            best = Some((method, mae, scaled));
        }
    }
    let (method, _, mut scaled) = best.expect("at least one method");
    for errors in &mut scaled {
        errors.sort_by(f64::total_cmp);
    }
    let expected = method.predict(y, horizon);
    let days = expected
        .iter()
        .zip(&scaled)
        .enumerate()
        .map(|(h, (&p, errors))| DayForecast {
            date: series.date(n + h),
            expected: p,
            intervals: levels
                .iter()
                .map(|&level| {
                    let spread = (p + 1.0).sqrt();
                    let lower = (p + lower_quantile(errors, (1.0 - level) / 2.0) * spread).max(0.0);
                    let upper =
                        (p + upper_quantile(errors, (1.0 + level) / 2.0) * spread).max(lower);
                    Interval {
                        level,
                        lower,
                        upper,
                    }
                })
                .collect(),
        })
        .collect();
    Ok(LeadGenerationForecast {
        method,
        days,
        candidates,
        origins: origins.len(),
    })
}

/// The value at or above a share `q` of `sorted` with the finite-sample
/// correction of split conformal prediction ((k + 1) ranks, rounded out).
fn upper_quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((sorted.len() + 1) as f64 * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn lower_quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((sorted.len() + 1) as f64 * q).floor() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Mean absolute change from a week before: what MASE divides by (1 for a
/// series that never changes, so that the figure stays finite).
pub fn seasonal_naive_scale(y: &[f64]) -> f64 {
    if y.len() <= SEASON {
        return 1.0;
    }
    let total: f64 = y
        .windows(SEASON + 1)
        .map(|w| (w[SEASON] - w[0]).abs())
        .sum();
    let scale = total / (y.len() - SEASON) as f64;
    if scale > 0.0 {
        scale
    } else {
        1.0
    }
}

/// Each day forecast as the mean of the same weekday over the last `weeks`
/// weeks (one week: seasonal naive).
fn seasonal_mean(y: &[f64], horizon: usize, weeks: usize) -> Vec<f64> {
    let n = y.len();
    let weeks = weeks.min(n / SEASON).max(1);
    (0..horizon)
        .map(|h| {
            let day = n - SEASON + h % SEASON;
            (0..weeks).map(|k| y[day - k * SEASON]).sum::<f64>() / weeks as f64
        })
        .collect()
}

/// The last `weeks` weeks as a straight line times a weekday profile: a
/// growing (or shrinking) inflow keeps its weekly shape.
fn weekday_trend(y: &[f64], horizon: usize, weeks: usize) -> Vec<f64> {
    let n = y.len();
    let window = (weeks * SEASON).min(n / SEASON * SEASON);
    let start = n - window;
    let mean = y[start..].iter().sum::<f64>() / window as f64;
    if mean == 0.0 {
        return vec![0.0; horizon];
    }
    let mut profile = [0.0; SEASON];
    for t in start..n {
        profile[t % SEASON] += y[t];
    }
    for p in &mut profile {
        *p /= (window / SEASON) as f64 * mean;
    }
    // Least squares of the deseasonalised counts on time, over the weekdays
    // that see leads at all.
    let points: Vec<(f64, f64)> = (start..n)
        .filter(|t| profile[t % SEASON] > 0.0)
        .map(|t| (t as f64, y[t] / profile[t % SEASON]))
        .collect();
    let count = points.len() as f64;
    let (mean_t, mean_z) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (t, z)| (a + t / count, b + z / count));
    let (covariance, variance) = points.iter().fold((0.0, 0.0), |(c, v), (t, z)| {
        (c + (t - mean_t) * (z - mean_z), v + (t - mean_t).powi(2))
    });
    let slope = if variance > 0.0 {
        covariance / variance
    } else {
        0.0
    };
    (n..n + horizon)
        .map(|t| (mean_z + slope * (t as f64 - mean_t)) * profile[t % SEASON])
        .collect()
}

/// Additive Holt–Winters with a damped trend; the smoothing weights are the
/// grid point with the smallest one-step-ahead squared error.
/// How the weekly pattern combines with the level: added to it, or a
/// factor of it (the pattern grows with the inflow).
#[derive(Clone, Copy, PartialEq)]
enum Season {
    Additive,
    Multiplicative,
}

/// Below this a level or seasonal factor is treated as zero (a weekday
/// that never has leads), so that no division blows up.
const TINY: f64 = 1e-6;

fn holt_winters(y: &[f64], horizon: usize, season: Season) -> Vec<f64> {
    const ALPHAS: [f64; 4] = [0.05, 0.1, 0.2, 0.4];
    const BETAS: [f64; 3] = [0.0, 0.02, 0.1];
    const GAMMAS: [f64; 3] = [0.05, 0.15, 0.3];
    const PHIS: [f64; 2] = [0.9, 0.98];
    let mut best = (f64::INFINITY, HoltWintersState::initial(y, season));
    for alpha in ALPHAS {
        for beta in BETAS {
            for gamma in GAMMAS {
                for phi in PHIS {
                    let weights = [alpha, beta, gamma, phi];
                    let (sse, state) = HoltWintersState::run(y, weights, season);
                    if sse < best.0 {
                        best = (sse, state);
                    }
                }
            }
        }
    }
    best.1.forecast(y.len(), horizon)
}

#[derive(Clone)]
struct HoltWintersState {
    level: f64,
    trend: f64,
    seasonal: [f64; SEASON],
    phi: f64,
    season: Season,
}

impl HoltWintersState {
    /// Level from the first week, trend from the first two, seasonal terms
    /// as the first week's offsets from its mean.
    fn initial(y: &[f64], season: Season) -> HoltWintersState {
        let week = |w: usize| y[w * SEASON..(w + 1) * SEASON].iter().sum::<f64>() / SEASON as f64;
        let level = week(0);
        let mut seasonal = [0.0; SEASON];
        for (i, s) in seasonal.iter_mut().enumerate() {
            *s = match season {
                Season::Additive => y[i] - level,
                Season::Multiplicative if level > TINY => y[i] / level,
                Season::Multiplicative => 1.0,
            };
        }
        HoltWintersState {
            level,
            trend: (week(1) - level) / SEASON as f64,
            seasonal,
            phi: 1.0,
            season,
        }
    }

    fn with_season(&self, base: f64, s: usize) -> f64 {
        match self.season {
            Season::Additive => base + self.seasonal[s],
            Season::Multiplicative => base * self.seasonal[s],
        }
    }

    /// The state after the whole series and its one-step squared error.
    fn run(
        y: &[f64],
        [alpha, beta, gamma, phi]: [f64; 4],
        season: Season,
    ) -> (f64, HoltWintersState) {
        let mut state = HoltWintersState::initial(y, season);
        state.phi = phi;
        let mut sse = 0.0;
        for (t, &value) in y.iter().enumerate().skip(SEASON) {
            let s = t % SEASON;
            let damped = state.level + phi * state.trend;
            sse += (value - state.with_season(damped, s)).powi(2);
            let (level, seasonal): (f64, fn(f64, f64) -> f64) = match season {
                Season::Additive => (
                    alpha * (value - state.seasonal[s]) + (1.0 - alpha) * damped,
                    |value: f64, level: f64| value - level,
                ),
                Season::Multiplicative => {
                    // A weekday without leads says nothing about the level.
                    let level = if state.seasonal[s] > TINY {
                        alpha * (value / state.seasonal[s]) + (1.0 - alpha) * damped
                    } else {
                        damped
                    };
                    (
                        level,
                        |value: f64, level: f64| {
                            if level > TINY {
                                value / level
                            } else {
                                1.0
                            }
                        },
                    )
                }
            };
            state.trend = beta * (level - state.level) + (1.0 - beta) * phi * state.trend;
            state.seasonal[s] = gamma * seasonal(value, level) + (1.0 - gamma) * state.seasonal[s];
            state.level = level;
        }
        (sse, state)
    }

    fn forecast(&self, n: usize, horizon: usize) -> Vec<f64> {
        let mut damping = 0.0;
        let mut factor = 1.0;
        (0..horizon)
            .map(|h| {
                factor *= self.phi;
                damping += factor;
                self.with_season(self.level + damping * self.trend, (n + h) % SEASON)
            })
            .collect()
    }
}

/// How [`forecast`] did at past origins: at each, it saw only the days
/// before and forecast the `horizon` days after.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backtest {
    pub origins: usize,
    pub horizon: usize,
    /// Mean over origins of the MASE (scaled by each origin's in-sample
    /// seasonal-naive error).
    pub mase: f64,
    /// The same for seasonal naive, the baseline to beat.
    pub seasonal_naive_mase: f64,
    /// Per level, the share of forecast days whose count fell inside.
    pub coverage: Vec<(f64, f64)>,
    /// The method chosen at each origin, oldest first.
    pub methods: Vec<Method>,
}

/// Backtests over `origins` origins `step` days apart, the last one
/// `horizon` days before the end of the series.
pub fn backtest(
    series: &DailySeries,
    horizon: usize,
    origins: usize,
    step: usize,
    levels: &[f64],
) -> Result<Backtest, LeadGenerationError> {
    let n = series.counts.len();
    let span = horizon + step * origins.saturating_sub(1);
    let needed = min_days(horizon) + span;
    if origins == 0 || n < needed {
        return Err(LeadGenerationError::TooShort {
            days: n,
            horizon,
            needed,
        });
    }
    let mut mase = 0.0;
    let mut naive_mase = 0.0;
    let mut inside = vec![0usize; levels.len()];
    let mut methods = Vec::new();
    for j in (0..origins).rev() {
        let origin = n - horizon - j * step;
        let history = DailySeries {
            start: series.start,
            counts: series.counts[..origin].to_vec(),
        };
        let actual = &series.counts[origin..origin + horizon];
        let result = forecast(&history, horizon, levels)?;
        let scale = seasonal_naive_scale(&history.counts);
        let mae = |predicted: &mut dyn Iterator<Item = f64>| {
            predicted
                .zip(actual)
                .map(|(p, a)| (a - p).abs())
                .sum::<f64>()
                / horizon as f64
        };
        mase += mae(&mut result.days.iter().map(|d| d.expected)) / scale;
        naive_mase += mae(&mut Method::SeasonalNaive
            .predict(&history.counts, horizon)
            .into_iter())
            / scale;
        for (day, a) in result.days.iter().zip(actual) {
            for (k, interval) in day.intervals.iter().enumerate() {
                inside[k] += (interval.lower <= *a && *a <= interval.upper) as usize;
            }
        }
        methods.push(result.method);
    }
    let days = (origins * horizon) as f64;
    Ok(Backtest {
        origins,
        horizon,
        mase: mase / origins as f64,
        seasonal_naive_mase: naive_mase / origins as f64,
        coverage: levels
            .iter()
            .zip(&inside)
            .map(|(l, i)| (*l, *i as f64 / days))
            .collect(),
        methods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn poisson(rng: &mut ChaCha8Rng, mean: f64) -> f64 {
        // Knuth's method: small means only, which is all these tests use.
        let limit = (-mean).exp();
        let (mut k, mut p) = (0.0, 1.0);
        loop {
            p *= rng.random::<f64>();
            if p <= limit {
                return k;
            }
            k += 1.0;
        }
    }

    /// Weekday-heavy inflow growing by `growth` leads a day per day.
    fn weekly_series(days: usize, growth: f64, seed: u64) -> DailySeries {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let profile = [1.2, 1.3, 1.2, 1.1, 1.0, 0.3, 0.2];
        DailySeries {
            start: NaiveDate::from_ymd_opt(2025, 1, 6).unwrap(),
            counts: (0..days)
                .map(|t| poisson(&mut rng, (10.0 + growth * t as f64) * profile[t % 7]))
                .collect(),
        }
    }

    #[test]
    fn a_short_series_is_refused_with_what_it_needs() {
        let series = weekly_series(50, 0.0, 1);
        assert_eq!(
            forecast(&series, 14, &[0.8]),
            Err(LeadGenerationError::TooShort {
                days: 50,
                horizon: 14,
                needed: 61
            })
        );
        assert!(forecast(&weekly_series(61, 0.0, 1), 14, &[0.8]).is_ok());
        assert_eq!(
            forecast(&series, 0, &[0.8]),
            Err(LeadGenerationError::Horizon(0))
        );
        assert_eq!(
            forecast(&series, 7, &[1.0]),
            Err(LeadGenerationError::Level(1.0))
        );
    }

    #[test]
    fn each_method_follows_the_weekly_shape() {
        // Exactly periodic: every method but the damped one repeats it.
        let week = [9.0, 10.0, 9.0, 8.0, 7.0, 2.0, 0.0];
        let y: Vec<f64> = (0..70).map(|t| week[t % 7]).collect();
        for &method in Method::ALL {
            let predicted = method.predict(&y, 10);
            for (h, p) in predicted.iter().enumerate() {
                assert!(
                    (p - week[(70 + h) % 7]).abs() < 0.5,
                    "{method}: day {h} {p} against {}",
                    week[(70 + h) % 7]
                );
            }
        }
    }

    #[test]
    fn the_mean_of_trend_windows_errs_less_than_one_short_window_on_a_steady_trend() {
        // A steady trend under Poisson noise: every window sees the same
        // line, the 8-week one with the most noise in its slope, so their
        // mean wins the backtest. (Not on every series: a steep trend biases
        // a long window's weekday profile, which is why the backtest
        // chooses between them.)
        for seed in [3, 4, 5] {
            let series = weekly_series(400, 0.5, seed);
            let result = forecast(&series, 14, &[0.8]).unwrap();
            let mase = |method| {
                result
                    .candidates
                    .iter()
                    .find(|c| c.method == method)
                    .unwrap()
                    .mase
            };
            assert!(
                mase(Method::WeekdayTrends) < mase(Method::WeekdayTrend),
                "seed {seed}: {} against {}",
                mase(Method::WeekdayTrends),
                mase(Method::WeekdayTrend)
            );
        }
    }

    #[test]
    fn a_growing_series_is_followed_by_a_trend_method() {
        let series = weekly_series(200, 0.15, 7);
        let result = forecast(&series, 14, &[0.8, 0.95]).unwrap();
        assert!(
            matches!(
                result.method,
                Method::WeekdayTrend
                    | Method::WeekdayTrends
                    | Method::HoltWinters
                    | Method::HoltWintersMultiplicative
            ),
            "chose {}",
            result.method
        );
        // The level 200 days in is about 40 on weekdays: the forecast is
        // above the last weeks' mean, not flat.
        let last_weeks = series.counts[172..].iter().sum::<f64>() / 28.0;
        assert!(result.expected_total() / 14.0 > last_weeks);
        let naive = result
            .candidates
            .iter()
            .find(|c| c.method == Method::SeasonalNaive)
            .unwrap();
        let chosen = result
            .candidates
            .iter()
            .find(|c| c.method == result.method)
            .unwrap();
        assert!(chosen.mase < naive.mase);
        for day in &result.days {
            let [eighty, ninety_five] = &day.intervals[..] else {
                panic!("two levels");
            };
            assert!(0.0 <= ninety_five.lower && ninety_five.lower <= eighty.lower);
            assert!(eighty.lower <= day.expected && day.expected <= eighty.upper);
            assert!(eighty.upper <= ninety_five.upper);
        }
        assert_eq!(result.days[0].date, series.end());

        let mut csv = Vec::new();
        result.write_csv(&mut csv).unwrap();
        let text = String::from_utf8(csv).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("date,forecast,lower_80,upper_80,lower_95,upper_95")
        );
        assert_eq!(lines.count(), 14);
    }

    #[test]
    fn days_without_leads_give_zero_forecasts_and_intervals_from_zero() {
        // Leads on Mondays only, and few.
        let y: Vec<f64> = (0..120)
            .map(|t| if t % 7 == 0 { (t % 3) as f64 } else { 0.0 })
            .collect();
        let series = DailySeries {
            start: NaiveDate::from_ymd_opt(2025, 1, 6).unwrap(),
            counts: y,
        };
        let result = forecast(&series, 7, &[0.8]).unwrap();
        for day in &result.days {
            assert!(day.expected >= 0.0 && day.intervals[0].lower >= 0.0);
        }
        // The six days after a Monday see nothing, and are forecast so.
        for day in &result.days[..6] {
            assert!(day.expected < 0.01, "{day:?}");
        }
    }

    #[test]
    fn backtested_intervals_cover_about_as_often_as_they_say() {
        let series = weekly_series(400, 0.05, 3);
        let result = backtest(&series, 14, 12, 7, &[0.8, 0.95]).unwrap();
        let (eighty, ninety_five) = (result.coverage[0].1, result.coverage[1].1);
        // 168 forecast days: a loose band around nominal, wide enough
        // for the sampling noise of one series.
        assert!((0.68..=0.92).contains(&eighty), "80% covered {eighty}");
        assert!(
            (0.88..=1.0).contains(&ninety_five),
            "95% covered {ninety_five}"
        );
        assert!(result.mase <= result.seasonal_naive_mase, "{result:?}");
        assert_eq!(result.methods.len(), 12);
    }
}
