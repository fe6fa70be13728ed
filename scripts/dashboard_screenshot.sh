#!/usr/bin/env bash
# Train the main job briefly with the monitors and the dashboard, serve its logs with TensorBoard, and save what
# headless Chromium shows at #custom_scalars to docs/images/dashboard.png (and the scalars page, filtered to the
# lr and gradient-norm keys, to docs/images/dashboard-scalars.png).
#
# Usage: scripts/dashboard_screenshot.sh [Hydra overrides for lightning-optim-train...]
# Environment: BIN (default .venv/bin), OUT (default docs/images/dashboard.png), CHROMIUM (default
# /usr/bin/chromium; installed with apt-get when missing), WINDOW (default 1600,1400), KEEP=1 keeps the run dir.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
OUT=${OUT:-docs/images/dashboard.png}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
WINDOW=${WINDOW:-1600,1400}
WORK=$(mktemp -d)
TB_PID=""

cleanup() {
    if [ -n "$TB_PID" ]; then kill "$TB_PID" 2>/dev/null || true; wait "$TB_PID" 2>/dev/null || true; fi
    if [ "${KEEP:-0}" = 1 ]; then echo "run kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

if [ ! -x "$CHROMIUM" ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
fi

# The main job with its default callbacks (conf/callbacks/default.yaml): checkpoints, monitors, dashboard.
echo "training into $WORK/run"
"$BIN/lightning-optim-train" \
    hydra.run.dir="$WORK/run" \
    logger=tensorboard \
    trainer.max_epochs=4 ++trainer.limit_train_batches=30 ++trainer.limit_val_batches=5 \
    trainer.log_every_n_steps=2 trainer.gradient_clip_val=1.0 ++trainer.enable_progress_bar=false \
    optimizer.lr=0.2 optimizer.weight_decay=5e-4 \
    'param_groups=[{name:no_decay,params:bias,weight_decay:0.0,lr_scale:0.5}]' \
    "$@" >"$WORK/train.log" 2>&1 || { tail -n 40 "$WORK/train.log"; exit 1; }

PORT=$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')
"$BIN/tensorboard" --logdir "$WORK/run/tensorboard" --host localhost --port "$PORT" >"$WORK/tensorboard.log" 2>&1 &
TB_PID=$!
URL="http://localhost:$PORT"
# Ready when the layout and the lr series have been read from the event files (TensorBoard loads them in the
# background after it starts answering).
for _ in $(seq 120); do
    if curl -sf "$URL/data/plugin/custom_scalars/layout" | grep -q category \
        && curl -sf "$URL/data/plugin/scalars/tags" | grep -q '"lr-'; then
        break
    fi
    kill -0 "$TB_PID" 2>/dev/null || { cat "$WORK/tensorboard.log"; exit 1; }
    sleep 0.5
done
curl -sf "$URL/data/plugin/custom_scalars/layout" | grep -q category || { echo "TensorBoard never served the layout"; exit 1; }

shoot() {  # shoot <png> <url>
    mkdir -p "$(dirname "$1")"
    "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
        --disable-component-update --disable-sync --user-data-dir="$(mktemp -d -p "$WORK")" --hide-scrollbars \
        --window-size="$WINDOW" --virtual-time-budget=15000 --screenshot="$1" "$2" >"$WORK/chromium.log" 2>&1 \
        || { cat "$WORK/chromium.log"; exit 1; }
    echo "saved $1 ($2)"
}
shoot "$OUT" "$URL/#custom_scalars"
shoot "${OUT%.png}-scalars.png" "$URL/#scalars&tagFilter=lr-%7Cgrad_norm"
