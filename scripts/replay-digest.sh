#!/usr/bin/env bash
# Behaviour check for refactors (issue 14): simulate, replay, train with the configured seed,
# replay again with the gradient-boosting model active; print digests.
set -euo pipefail
BIN=$(realpath ${BIN:-target/release/leadflow})
W=${1:-/tmp/leadflow-digest}
rm -rf "$W"; mkdir -p "$W"
export LEADFLOW_LOG=warn
export DATABASE_URL="sqlite://$W/lf.db"
$BIN simulate --leads 5000 --days 60 --seed 7 --start 2026-09-01 --output "$W/stream.jsonl"
$BIN run --from-file "$W/stream.jsonl" --output-dir "$W/out" >/dev/null
$BIN model train --type gradient-boosting --activate never >/dev/null
$BIN model train --type random-forest --activate never >/dev/null
$BIN model train --type logistic --activate never >/dev/null
sqlite3 "$W/lf.db" "SELECT version, model_type, params, features, metrics, model, profile FROM models ORDER BY version" > "$W/models.txt"
export DATABASE_URL="sqlite://$W/lf2.db"
$BIN migrate >/dev/null
sqlite3 "$W/lf2.db" "ATTACH '$W/lf.db' AS a; INSERT INTO models SELECT * FROM a.models; UPDATE models SET active = (version = 1);"
$BIN run --from-file "$W/stream.jsonl" --output-dir "$W/out-ml" >/dev/null
sqlite3 "$W/lf.db" "SELECT lead_ext_id, state FROM leads ORDER BY lead_ext_id" > "$W/leads.txt" 2>/dev/null || sqlite3 "$W/lf.db" ".schema leads" 
cd "$W"
sha256sum stream.jsonl out/* out-ml/* models.txt leads.txt
