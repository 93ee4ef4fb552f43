#!/usr/bin/env bash
# Render a drsearch HTML report in headless Chromium and save a full-page screenshot, to look
# at a report as a reader would. Needs Debian's chromium (apt-get install chromium).
#   scripts/render_report.sh reports/demo/report.html /tmp/report.png
set -euo pipefail
report="$(realpath "$1")"
out="${2:-report.png}"
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars --window-size=1200,5200 \
    --virtual-time-budget=8000 --screenshot="$out" "file://$report" 2>/dev/null
echo "screenshot of $report -> $out"
