#!/usr/bin/env bash
# Serve the built documentation site (site/, from `make docs-build`) on localhost, open its home page in headless
# Chromium, check that the page is not blank and that its navigation is there, and save the screenshot to
# docs/images/site.png.
#
# Environment: BIN (default .venv/bin), OUT (default docs/images/site.png), CHROMIUM (default /usr/bin/chromium;
# installed with apt-get when missing), WINDOW (default 1400,1000).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
OUT=${OUT:-docs/images/site.png}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
WINDOW=${WINDOW:-1400,1000}
WORK=$(mktemp -d)
SERVER_PID=""

cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

[ -f site/index.html ] || { echo "site/index.html is missing: run make docs-build first"; exit 1; }
if [ ! -x "$CHROMIUM" ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
fi

PORT=$("$BIN/python" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')
"$BIN/python" -m http.server "$PORT" --bind localhost --directory site >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
URL="http://localhost:$PORT/"
for _ in $(seq 50); do curl -sf "$URL" >/dev/null && break; sleep 0.2; done

chromium_run() {
    "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
        --disable-component-update --disable-sync --user-data-dir="$(mktemp -d -p "$WORK")" --hide-scrollbars \
        --window-size="$WINDOW" --virtual-time-budget=5000 "$@" 2>"$WORK/chromium.log"
}
chromium_run --dump-dom "$URL" >"$WORK/dom.html" || { cat "$WORK/chromium.log"; exit 1; }
mkdir -p "$(dirname "$OUT")"
chromium_run --screenshot="$OUT" "$URL" >/dev/null || { cat "$WORK/chromium.log"; exit 1; }

# The page as Chromium rendered it: the navigation with the guides and the reference, and a picture that is not one
# colour (a blank or unstyled page fails).
"$BIN/python" - "$WORK/dom.html" "$OUT" <<'PY'
import sys

import matplotlib.image

dom, png = open(sys.argv[1]).read(), matplotlib.image.imread(sys.argv[2])
missing = [text for text in ('class="md-nav', "Getting started", "Reference", "Metric keys") if text not in dom]
assert not missing, f"the rendered page lacks {missing}"
spread = float(png[..., :3].std())
assert spread > 0.05, f"the screenshot is nearly one colour (pixel standard deviation {spread:.3f})"
print(f"saved {sys.argv[2]}: navigation present, pixel standard deviation {spread:.3f}")
PY
