"""One Python learner on the benchmark CSV written by `cargo bench --bench models`.

Run once per library in its own process (two OpenMP runtimes in one process
slow LightGBM down by two orders of magnitude). Same split as leadflow: rows
are ordered by close time, the newest 20% are the hold-out, the newest 15% of
the rest watch early stopping (scikit-learn's own early stopping draws its
validation rows at random; it has no time-ordered option).

Prints one JSON line: library, roc_auc, log_loss, train_seconds,
score_us_per_row (the hold-out in one call, every core) and
score_one_thread_us_per_row (the same call on one thread, the anchor for
leadflow's processor, which scores one row after another on one thread).
"""
import argparse
import json
import time

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score

parser = argparse.ArgumentParser()
parser.add_argument("--csv", required=True)
parser.add_argument("--lib", required=True, choices=["sklearn_gbc", "sklearn_hgb", "lightgbm"])
args = parser.parse_args()

frame = pd.read_csv(args.csv)
frame = frame.sort_values("closed_at", kind="stable")
y = frame.pop("converted").to_numpy()
frame.pop("closed_at")
for column in frame.columns:
    if not pd.api.types.is_numeric_dtype(frame[column]):
        frame[column] = frame[column].astype("category")
n = len(frame)
holdout = n - round(n * 0.2)
valid = holdout - int(holdout * 0.15)
X_train, y_train = frame.iloc[:holdout], y[:holdout]
X_test, y_test = frame.iloc[holdout:], y[holdout:]

started = time.perf_counter()
if args.lib == "lightgbm":
    import lightgbm as lgb

    model = lgb.LGBMClassifier(
        learning_rate=0.05, n_estimators=1000, num_leaves=15, max_depth=5,
        min_child_samples=20, reg_lambda=1.0, subsample=0.8, subsample_freq=1,
        colsample_bytree=0.8, n_jobs=2, verbose=-1, random_state=7,
    )
    model.fit(
        frame.iloc[:valid], y[:valid],
        eval_set=[(frame.iloc[valid:holdout], y[valid:holdout])],
        callbacks=[lgb.early_stopping(40, verbose=False)],
    )
elif args.lib == "sklearn_hgb":
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(
        learning_rate=0.05, max_iter=1000, max_leaf_nodes=15, max_depth=5,
        min_samples_leaf=20, l2_regularization=1.0, early_stopping=True,
        validation_fraction=0.15, n_iter_no_change=40, categorical_features="from_dtype",
        random_state=7,
    )
    model.fit(X_train, y_train)
else:
    from sklearn.ensemble import GradientBoostingClassifier

    # No categorical or missing-value support: category codes, -1 for missing.
    def numeric(x):
        x = x.copy()
        for column in x.columns:
            if str(x[column].dtype) == "category":
                x[column] = x[column].cat.codes
        return x.fillna(-1)

    X_train, X_test = numeric(X_train), numeric(X_test)
    model = GradientBoostingClassifier(
        learning_rate=0.05, n_estimators=1000, max_depth=3, subsample=0.8,
        validation_fraction=0.15, n_iter_no_change=40, random_state=7,
    )
    model.fit(X_train, y_train)
train_seconds = time.perf_counter() - started

started = time.perf_counter()
p = model.predict_proba(X_test)[:, 1]
score_seconds = time.perf_counter() - started

from threadpoolctl import threadpool_limits

# LightGBM takes its thread count per call; scikit-learn's OpenMP loops
# follow threadpoolctl's limit.
one_thread = {"num_threads": 1} if args.lib == "lightgbm" else {}
with threadpool_limits(limits=1):
    started = time.perf_counter()
    p_one = model.predict_proba(X_test, **one_thread)[:, 1]
    one_thread_seconds = time.perf_counter() - started
assert np.allclose(p, p_one)
print(json.dumps({
    "library": args.lib,
    "rows": n,
    "roc_auc": roc_auc_score(y_test, p),
    "log_loss": log_loss(y_test, np.clip(p, 1e-15, 1 - 1e-15)),
    "train_seconds": train_seconds,
    "score_us_per_row": score_seconds / len(p) * 1e6,
    "score_one_thread_us_per_row": one_thread_seconds / len(p) * 1e6,
}))
