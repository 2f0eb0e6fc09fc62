#!/usr/bin/env bash
# The main demo: set up .venv, fit a model on the bundled data/demo.csv (12 irregularly sampled sensors,
# 14 days), forecast every sensor 2 days past the end of its history with uncertainty bands, and record the
# run in MLflow. Everything is written under demo_output/:
#   demo_output/forecast.csv          unique_id, ds (+01:00 timestamps), ode_rnn, ode_rnn-lo-50/-hi-50/-lo-90/-hi-90
#   demo_output/plots/*.png           one PNG per sensor: the last 5 days of history, the forecast and its bands
#   demo_output/model/                the trained model (weights.pt + config.json; Forecaster.load)
#   demo_output/checkpoints/          Lightning checkpoints (resume with --ckpt_path last)
#   demo_output/backtest/             rolling-origin backtest: cv.csv, metrics.csv, report.md, error_vs_horizon.png
#   demo_output/mlflow.db, mlartifacts/   the MLflow store (params, per-epoch metrics, config, model, plots, backtest)
# The model and its options are in configs/demo.yaml. Runs accumulate in demo_output/mlflow.db; the other
# outputs are replaced on every run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The demo model is tiny: one thread per process is faster than several (less threading overhead on small
# tensors) and leaves the other cores free. Override with e.g. OMP_NUM_THREADS=4 bash scripts/demo.sh.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
ROOT=$(pwd)
OUT=demo_output
BIN=.venv/bin
start=$SECONDS
rm -rf "$OUT/checkpoints" "$OUT/model" "$OUT/plots" "$OUT/forecast.csv" "$OUT/lightning_logs" "$OUT/backtest"
mkdir -p "$OUT"

echo "== 1/3 fit: ts-neuralode fit --config configs/demo.yaml" >&2
"$BIN/ts-neuralode" fit --config configs/demo.yaml

echo "== 2/3 forecast: 2 days past each sensor's last observation, every 30 min" >&2
"$BIN/ts-neuralode" forecast --model "$OUT/model" --data.path data/demo.csv --horizon 2D --freq 30min \
    --out "$OUT/forecast.csv" --plot_dir "$OUT/plots" --plot_history 5D --mlflow_run "$OUT/checkpoints"

echo "== 3/3 backtest: 2-day forecasts from 4 cutoffs a day apart, scored at the sensors' own reading times" >&2
"$BIN/ts-neuralode" backtest --model "$OUT/model" --data.path data/demo.csv --horizon 2D --n_windows 4 --step 1D \
    --out_dir "$OUT/backtest" --mlflow_run "$OUT/checkpoints" --progress false

read -r run_id exp_id < <("$BIN/python" -c "import json; d = json.load(open('$OUT/checkpoints/mlflow_run.json')); print(d['run_id'], d['experiment_id'])")
cat <<MSG

Demo finished in $((SECONDS - start)) s (after setup).
  forecast CSV : $ROOT/$OUT/forecast.csv
  plots        : $ROOT/$OUT/plots/  (one PNG per sensor)
  model        : $ROOT/$OUT/model/  (Forecaster.load("$OUT/model") or ts-neuralode forecast --model $OUT/model)
  backtest     : $ROOT/$OUT/backtest/report.md  (metrics per horizon and series; error_vs_horizon.png)
  MLflow run   : $run_id (experiment "demo"), store $ROOT/$OUT/mlflow.db
Open it in the MLflow UI:
  $ROOT/$BIN/mlflow ui --backend-store-uri sqlite:///$ROOT/$OUT/mlflow.db --port 5000
then browse http://127.0.0.1:5000/#/experiments/$exp_id/runs/$run_id
MSG
