#!/usr/bin/env bash
# Set up stratum in ./.venv and run the main job (Dagster's enrich_job) on a folder of images.
#   bash scripts/quickstart.sh INPUT_DIR [OUTPUT_DIR]
# Environment: STRATUM_TORCH (pip spec for torch, default torch==2.13.0), STRATUM_MODEL_DIR,
# DAGSTER_HOME (default ./.dagster_home: a SQLite instance), STRATUM_OLLAMA_URL.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash scripts/quickstart.sh INPUT_DIR [OUTPUT_DIR]" >&2
  exit 2
fi
input=$(cd "$1" && pwd)
output=${2:-./dataset}
mkdir -p "$output"
output=$(cd "$output" && pwd)
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -c "import torch" 2>/dev/null || pip install --quiet "${STRATUM_TORCH:-torch==2.13.0}"
pip install --quiet -e ".[all]"
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster_home}"
mkdir -p "$DAGSTER_HOME"
python -m stratum_dagster.quickstart "$input" "$output"
echo
echo "Browse the runs: DAGSTER_HOME=$DAGSTER_HOME STRATUM_INPUT_DIR=$input STRATUM_OUTPUT_DIR=$output .venv/bin/dagster dev"
