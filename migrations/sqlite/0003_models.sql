-- The model registry: every trained model with what it was trained on, how
-- it scored on its hold-out, the serialized model itself, and which one is
-- active (at most one; running processors poll for it).
CREATE TABLE models (
    version         INTEGER PRIMARY KEY AUTOINCREMENT,
    model_type      TEXT NOT NULL,
    params          TEXT NOT NULL,
    features        TEXT NOT NULL,
    metrics         TEXT NOT NULL,
    -- What started the training: cli, csv:<file>, schedule, drift, api.
    reason          TEXT NOT NULL,
    window_start    INTEGER,
    window_end      INTEGER,
    train_rows      INTEGER NOT NULL,
    holdout_rows    INTEGER NOT NULL,
    trained_at      INTEGER NOT NULL,
    training_seconds REAL NOT NULL,
    model           TEXT NOT NULL,
    -- Feature distributions of the training rows, the drift reference.
    profile         TEXT,
    active          BOOLEAN NOT NULL DEFAULT FALSE,
    activated_at    INTEGER
);
CREATE UNIQUE INDEX models_one_active ON models (active) WHERE active;

-- Recent traffic for drift checks.
CREATE INDEX leads_updated_at ON leads (updated_at);
