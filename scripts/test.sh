#!/usr/bin/env bash
# Set up (idempotent) and run the test suite, then ruff and mypy. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} VLLM_ENABLE_V1_MULTIPROCESSING=0
.venv/bin/ruff check alignment stages scripts tests
.venv/bin/mypy alignment stages
# the slowest tests are printed so the default run can be kept within its 30-minute budget
.venv/bin/python -m pytest -q --durations=20 "$@"
