#!/usr/bin/env bash
# The multi-round driver: every stage of a recipe, round after round, each through `alignment_run`.
#
#   bash recipes/iterative/run.sh [--recipe NAME] [--rounds N] [--run-dir DIR] [key=value ...]
#   RECIPE=toy ROUNDS=3 RUN_DIR=runs/toy bash recipes/iterative/run.sh
#
# Extra key=value arguments go to every stage (e.g. world=ci, recipe.stage_settings.joint_train.train.lr=2e-4).
# LAUNCHER replaces `alignment_run`, e.g. LAUNCHER="torchrun --nproc_per_node 8 -m stages.cli" (see README.md).
# Every stage skips when its artifact is complete and resumes when it is partial, so re-running the same
# command after a crash is the resume. Paths are never built here: only run_dir and round are passed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
recipe="${RECIPE:-toy}"
rounds="${ROUNDS:-}"
run_dir="${RUN_DIR:-}"
overrides=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --recipe) recipe="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --run-dir) run_dir="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *=*) overrides+=("$1"); shift ;;
    *) echo "run.sh: unexpected argument '$1' (use --recipe, --rounds, --run-dir or key=value)" >&2; exit 2 ;;
  esac
done

if [[ -n "${ALIGNMENT_RUN:-}" ]]; then
  alignment_run="$ALIGNMENT_RUN"
elif [[ -x "$repo/.venv/bin/alignment_run" ]]; then
  alignment_run="$repo/.venv/bin/alignment_run"
else
  alignment_run="alignment_run"
fi
launcher="${LAUNCHER:-$alignment_run}"

common=("recipe=$recipe" "${overrides[@]}")
[[ -n "$run_dir" ]] && common+=("run_dir=$run_dir")
[[ -n "$rounds" ]] && common+=("rounds=$rounds")

# The recipe's plan (its stages, and rounds/run_dir after the overrides above), as "key value" lines. Read
# into a variable first so that an invalid configuration stops here with alignment_run's own error and status.
plan="$("$alignment_run" stage=iterate stage.list_stages=true "${common[@]}")"
stages=()
while read -r key value; do
  case "$key" in
    rounds) rounds="$value" ;;
    run_dir) run_dir="$value" ;;
    stage) stages+=("$value") ;;
  esac
done <<< "$plan"
[[ ${#stages[@]} -gt 0 ]] || { echo "run.sh: recipe '$recipe' lists no stages" >&2; exit 2; }

echo "[run.sh] recipe $recipe: ${rounds} round(s) of ${stages[*]} in $run_dir"
for ((round = 0; round < rounds; round++)); do
  for stage in "${stages[@]}"; do
    echo "[run.sh] round $round: $stage"
    # shellcheck disable=SC2086  # LAUNCHER may hold several words (torchrun ... -m stages.cli)
    $launcher "stage=$stage" "round=$round" "${common[@]}"
  done
done
"$alignment_run" stage=iterate "${common[@]}"  # every stage is complete: this only prints the summary table
