"""Small tabular data sets for `cargo bench --bench models -- --small`.

prepare --out DIR [--csv FILE:TARGET:DROP ...]
    Writes DIR/<name>.csv (the features, then `target` as 0/1) and
    DIR/<name>.splits.json (the test rows of five stratified 70/30 splits,
    seeded) for each public data set below and each extra CSV given (its
    TARGET column becomes `target`, DROP columns are left out). Every library
    and leadflow read the same files, so all see the same rows and splits.

run --data DIR/<name> --lib LIB
    Fits LIB with its defaults on each split's training rows and prints one
    JSON line: the mean ROC AUC, Brier score and fit seconds over the splits.
    One library per process (two OpenMP runtimes in one process slow
    LightGBM down by orders of magnitude).

The public data sets are read from packages installed in the bench venv,
never downloaded:
- breast_cancer: scikit-learn's bundled copy of the UCI Breast Cancer
  Wisconsin (Diagnostic) data (569 rows, 30 features; BSD-3-Clause package,
  data CC BY 4.0 at UCI). Target: malignant.
- caravan: the CoIL 2000 insurance data (5,822 customers, 85 ordinal
  features, 6% buy), from the ISLP package (BSD licence) of "An
  Introduction to Statistical Learning". Target: Purchase.
- default: ISLP's simulated credit-card default data (10,000 rows, a
  student flag, balance, income; 3% default). Target: default.
- oj: ISLP's orange-juice purchases (1,070 rows, 17 features, one of them a
  category). Target: Purchase == MM.
"""
import argparse
import importlib.util
import json
import os
import time

import numpy as np
import pandas as pd


def islp_csv(name):
    # Read the file without importing ISLP (its __init__ pulls in torch and
    # more, which the bench venv does not install).
    spec = importlib.util.find_spec("ISLP")
    return pd.read_csv(os.path.join(spec.submodule_search_locations[0], "data", f"{name}.csv"))


def public_sets():
    from sklearn.datasets import load_breast_cancer

    bc = load_breast_cancer(as_frame=True)
    frame = bc.data.copy()
    # scikit-learn codes malignant as 0; the positive class is the malignant one.
    frame["target"] = (bc.target == 0).astype(int)
    yield "breast_cancer", frame

    caravan = islp_csv("Caravan")
    caravan["target"] = (caravan.pop("Purchase") == "Yes").astype(int)
    yield "caravan", caravan

    default = islp_csv("Default")
    default["target"] = (default.pop("default") == "Yes").astype(int)
    yield "default", default

    oj = islp_csv("OJ")
    oj["target"] = (oj.pop("Purchase") == "MM").astype(int)
    yield "oj", oj


def prepare(out, extra):
    from sklearn.model_selection import StratifiedShuffleSplit

    os.makedirs(out, exist_ok=True)
    sets = list(public_sets())
    for spec in extra:
        path, target, *drop = spec.split(":")
        frame = pd.read_csv(path)
        frame = frame.drop(columns=[d for d in drop if d])
        frame["target"] = frame.pop(target).astype(int)
        sets.append((os.path.splitext(os.path.basename(path))[0], frame))
    for name, frame in sets:
        frame.to_csv(os.path.join(out, f"{name}.csv"), index=False)
        splitter = StratifiedShuffleSplit(n_splits=5, test_size=0.3, random_state=0)
        splits = [test.tolist() for _, test in splitter.split(frame, frame["target"])]
        with open(os.path.join(out, f"{name}.splits.json"), "w") as f:
            json.dump(splits, f)
        print(f"{name}: {len(frame)} rows, {frame['target'].mean():.3f} positive")


def model_for(lib, x):
    categorical = [c for c in x.columns if str(x[c].dtype) == "category"]
    numeric = [c for c in x.columns if c not in categorical]
    if lib == "lightgbm":
        import lightgbm as lgb

        return lgb.LGBMClassifier(verbose=-1, random_state=0, n_jobs=2), x
    if lib == "sklearn_hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0), x
    if lib == "sklearn_gbc":
        from sklearn.ensemble import GradientBoostingClassifier

        # No categorical or missing-value support: category codes, -1 for missing.
        x = x.copy()
        for c in categorical:
            x[c] = x[c].cat.codes
        return GradientBoostingClassifier(random_state=0), x.fillna(-1)
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    # What a user writes: standardised numbers (missing = mean), one-hot
    # categories, the default C = 1; max_iter raised from 100 so that it
    # converges on every set.
    prep = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(), StandardScaler()), numeric),
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"),
                              OneHotEncoder(handle_unknown="ignore")), categorical),
    ])
    return make_pipeline(prep, LogisticRegression(max_iter=5000)), x


def run(data, lib):
    from sklearn.metrics import brier_score_loss, roc_auc_score

    frame = pd.read_csv(f"{data}.csv")
    with open(f"{data}.splits.json") as f:
        splits = json.load(f)
    y = frame.pop("target").to_numpy()
    for column in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            frame[column] = frame[column].astype("category")
    aucs, briers, seconds = [], [], []
    for test in splits:
        mask = np.zeros(len(y), dtype=bool)
        mask[test] = True
        model, x = model_for(lib, frame)
        started = time.perf_counter()
        model.fit(x[~mask], y[~mask])
        seconds.append(time.perf_counter() - started)
        p = model.predict_proba(x[mask])[:, 1]
        aucs.append(roc_auc_score(y[mask], p))
        briers.append(brier_score_loss(y[mask], p))
    print(json.dumps({
        "library": lib,
        "roc_auc": float(np.mean(aucs)),
        "brier": float(np.mean(briers)),
        "train_seconds": float(np.mean(seconds)),
    }))


parser = argparse.ArgumentParser()
commands = parser.add_subparsers(dest="command", required=True)
p = commands.add_parser("prepare")
p.add_argument("--out", required=True)
p.add_argument("--csv", action="append", default=[])
r = commands.add_parser("run")
r.add_argument("--data", required=True)
r.add_argument("--lib", required=True,
               choices=["sklearn_gbc", "sklearn_hgb", "sklearn_logistic", "lightgbm"])
args = parser.parse_args()
if args.command == "prepare":
    prepare(args.out, args.csv)
else:
    run(args.data, args.lib)
