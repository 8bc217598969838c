#!/usr/bin/env bash
# Set up stratum in ./.venv and run the main job (Dagster's enrich_job) on a folder of images.
#   bash scripts/quickstart.sh INPUT_DIR [OUTPUT_DIR] [--caption-url URL] [--caption-model NAME] [--caption-backend ollama|openai]
# Environment: STRATUM_TORCH (pip spec for torch, default torch==2.13.0), STRATUM_MODEL_DIR,
# STRATUM_CAPTION_URL / _MODEL / _BACKEND, DAGSTER_HOME (default OUTPUT_DIR/.stratum/dagster_home:
# a SQLite instance of this dataset only). Ctrl-C stops the current shard cleanly (exit 130).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: bash scripts/quickstart.sh INPUT_DIR [OUTPUT_DIR] [caption options]" >&2
  exit 2
fi
input=$(cd "$1" && pwd)
output=./dataset
if [ $# -ge 2 ] && [ "${2#-}" = "$2" ]; then
  output=$2
  shift
fi
shift
mkdir -p "$output"
output=$(cd "$output" && pwd)
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -c "import torch" 2>/dev/null || pip install --quiet "${STRATUM_TORCH:-torch==2.13.0}"
pip install --quiet -e ".[all]"
# exec: Python takes this process's place, so Ctrl-C and SIGTERM reach it and nothing is left orphaned.
exec python -m stratum_dagster.quickstart "$input" "$output" "$@"
