#!/usr/bin/env bash
# What a board installs: build the wheel, install it with only the device-node dependencies into a
# fresh venv (no extras, nothing from this checkout's .venv), then `edgesplit --help`, a plan and a
# 2-stage emulated run on embedded Ray. Exact versions come from requirements.lock as constraints.
# Usage: bash scripts/check_wheel.sh [WORKDIR]   (CI runs it after `make test`; ~3-5 min, network
# to PyPI or a warm pip cache).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3.11}
WORK=${1:-$(mktemp -d /tmp/edgesplit-wheel.XXXXXX)}
mkdir -p "$WORK"
echo "== building the wheel into $WORK/dist"
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" . 2>/dev/null \
  || "$PY" -m pip wheel -q --no-deps -w "$WORK/dist" .
WHEEL=$(ls "$WORK"/dist/edgesplit-*.whl)
echo "== fresh venv: $WORK/venv"
rm -rf "$WORK/venv"
"$PY" -m venv "$WORK/venv"
BIN="$WORK/venv/bin"
"$BIN/pip" install -q --upgrade pip
# torch first and pinned (the CPU wheel), as the Makefile does.
"$BIN/pip" install -q torch==2.13.0
grep -v '^#' requirements.lock | sed 's/\[.*\]//' > "$WORK/constraints.txt"
"$BIN/pip" install -q -c "$WORK/constraints.txt" "$WHEEL"
echo "== installed: $("$BIN/pip" list 2>/dev/null | wc -l) packages (no extras)"
cd "$WORK"  # nothing from the checkout on the path
export RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=1
"$BIN/edgesplit" --help > help.txt
grep -q "profile" help.txt && grep -q "run" help.txt
cat > cluster.toml <<'TOML'
# two boards of PipeEdge's measured kinds, 1000 Mbps
source = "rcc0"
[defaults]
bandwidth_mbps = 1000
latency_ms = 0.0
[[devices]]
name = "rcc0"
kind = "RCC-VE-C2000"
memory_mb = 8192
[[devices]]
name = "rcc1"
kind = "RCC-VE-C2000"
memory_mb = 8192
TOML
PROFILE=pipeedge:google/vit-base-patch16-224
"$BIN/edgesplit" plan -p "$PROFILE" -c cluster.toml -o plan.json
"$BIN/python" - <<'PY'
import json
plan = json.load(open("plan.json"))
assert len(plan["stages"]) == 2, plan["stages"]
PY
"$BIN/edgesplit" run --plan plan.json -c cluster.toml -p "$PROFILE" --requests 8 \
  --compute emulated --time-scale 0.02 --report run.json
"$BIN/python" - <<'PY'
import json
report = json.load(open("run.json"))
assert report["requests"]["completed"] == 8, report["requests"]
print("wheel check ok: 2-stage emulated run, measured period", report["measured"]["period_s"])
PY
