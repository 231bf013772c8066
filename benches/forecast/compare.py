"""The anchors of `cargo bench --bench forecast`.

compare.py SERIES.csv --horizon H --origins K --step S --lib LIB

Reads a `date,count` series (no gaps), and at K origins S days apart, the
last one H days before the end, fits LIB on the days before the origin and
forecasts the H days after, with 80% and 95% intervals. Prints one JSON
line: mase (per origin the mean absolute error over the in-sample mean
absolute change from a week before, as leadflow computes it; averaged over
origins), coverage_80 and coverage_95 (share of forecast days inside), and
seconds_per_forecast (after one untimed warm-up call: statsforecast compiles
with numba on first use).

LIB:
- autoets: statsforecast's AutoETS(season_length=7) with
  ConformalIntervals(h=H, n_windows=5), its documented way to get intervals
  that are calibrated on past windows.
- seasonal_naive: statsforecast's SeasonalNaive(season_length=7) with the
  same conformal intervals.
"""
import argparse
import json
import time

import numpy as np
import pandas as pd
from statsforecast import StatsForecast
from statsforecast.models import AutoETS, SeasonalNaive
from statsforecast.utils import ConformalIntervals


def scale(y):
    if len(y) <= 7:
        return 1.0
    s = np.mean(np.abs(y[7:] - y[:-7]))
    return s if s > 0 else 1.0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("series")
    parser.add_argument("--horizon", type=int, default=14)
    parser.add_argument("--origins", type=int, default=8)
    parser.add_argument("--step", type=int, default=7)
    parser.add_argument("--lib", required=True, choices=["autoets", "seasonal_naive"])
    args = parser.parse_args()

    frame = pd.read_csv(args.series, parse_dates=["date"])
    y = frame["count"].to_numpy(dtype=float)
    h = args.horizon
    intervals = ConformalIntervals(h=h, n_windows=5)

    def model():
        if args.lib == "autoets":
            return AutoETS(season_length=7, prediction_intervals=intervals)
        return SeasonalNaive(season_length=7, prediction_intervals=intervals)

    def forecast(end):
        train = pd.DataFrame(
            {"unique_id": "s", "ds": frame["date"][:end], "y": y[:end]}
        )
        sf = StatsForecast(models=[model()], freq="D", n_jobs=1)
        out = sf.forecast(df=train, h=h, level=[80, 95])
        name = [c for c in out.columns if c not in ("unique_id", "ds") and "-" not in c][0]
        return out, name

    n = len(y)
    origins = [n - h - j * args.step for j in reversed(range(args.origins))]
    forecast(origins[0])  # warm-up: numba compiles here
    mase, inside80, inside95, seconds = [], 0, 0, 0.0
    for origin in origins:
        started = time.perf_counter()
        out, name = forecast(origin)
        seconds += time.perf_counter() - started
        actual = y[origin : origin + h]
        point = np.maximum(out[name].to_numpy(), 0.0)
        mase.append(np.mean(np.abs(actual - point)) / scale(y[:origin]))
        inside80 += np.sum(
            (out[f"{name}-lo-80"].to_numpy() <= actual) & (actual <= out[f"{name}-hi-80"].to_numpy())
        )
        inside95 += np.sum(
            (out[f"{name}-lo-95"].to_numpy() <= actual) & (actual <= out[f"{name}-hi-95"].to_numpy())
        )
    days = len(origins) * h
    print(
        json.dumps(
            {
                "library": args.lib,
                "mase": float(np.mean(mase)),
                "coverage_80": inside80 / days,
                "coverage_95": inside95 / days,
                "seconds_per_forecast": seconds / len(origins),
            }
        )
    )


if __name__ == "__main__":
    main()
