#!/usr/bin/env bash
# Mutation testing (mutmut 3) of the modules the study's answer rests on, one module at a time,
# each against the quick test files that exercise it; prints the kill rate per module and lists the
# surviving mutants. Not run by CI (minutes per module on 2 cores). See docs/mutation.md.
#
#   benchmarks/mutation.sh                        every module below
#   benchmarks/mutation.sh trainables/losses.py   only the modules given
#
# Each module runs in a scratch copy of the tree (mutmut writes a mutants/ folder beside the code and
# reads its [tool.mutmut] settings from pyproject.toml, written here per module). Environment:
#   MUTMUT_CHILDREN (default 2)  parallel mutant workers
#   MUTATION_OUT (default benchmarks/mutation-out)  per module: <module>.json stats, <module>.survivors
#   KEEP=1  keep the scratch copies (to `mutmut show NAME` a survivor there)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${MUTATION_OUT:-$ROOT/benchmarks/mutation-out}
CHILDREN=${MUTMUT_CHILDREN:-2}
mkdir -p "$OUT"

# module -> the quick (-m "not slow") test files that import and exercise it
declare -A TESTS=(
  [analysis/capacity.py]="tests/test_analysis_capacity.py tests/test_capacity_memorisation.py tests/test_capacity_tables.py tests/test_analysis_report.py tests/test_statistics.py"
  [analysis/overfitting.py]="tests/test_overfitting.py tests/test_analysis_capacity.py"
  [analysis/statistics.py]="tests/test_statistics.py tests/test_analysis_capacity.py"
  [trainables/config.py]="tests/test_config.py tests/test_optim.py tests/test_space.py"
  [trainables/loop.py]="tests/test_loop.py tests/test_optim.py"
  [trainables/losses.py]="tests/test_losses.py"
  [study/space.py]="tests/test_space.py tests/test_optuna_mirror.py"
  [study/optuna_mirror.py]="tests/test_optuna_mirror.py"
)
ORDER=(analysis/capacity.py analysis/overfitting.py analysis/statistics.py trainables/config.py trainables/loop.py
       trainables/losses.py study/space.py study/optuna_mirror.py)
MODULES=("$@")
[ ${#MODULES[@]} -gt 0 ] || MODULES=("${ORDER[@]}")

command -v mutmut >/dev/null || { echo "mutmut is not installed: pip install -e '.[dev]'" >&2; exit 2; }
rows=()
for module in "${MODULES[@]}"; do
  if [ -z "${TESTS[$module]+x}" ]; then echo "mutation.sh: no test files listed for $module" >&2; exit 2; fi
  if [ ! -f "$module" ]; then echo "skip $module: not in this tree"; continue; fi
  tests=()
  for t in ${TESTS[$module]}; do [ -f "$t" ] && tests+=("\"$t\""); done
  work=$(mktemp -d "${TMPDIR:-/tmp}/bp-mutmut-XXXXXX")
  tar --exclude=__pycache__ -cf - trainables study analysis tests pyproject.toml | tar -xf - -C "$work"
  cat >> "$work/pyproject.toml" <<TOML

[tool.mutmut]
source_paths = ["trainables", "study", "analysis"]
only_mutate = ["$module"]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-m", "not slow", "-q", "-x"]
pytest_add_cli_args_test_selection = [$(IFS=,; echo "${tests[*]}")]
process_isolation = "forkserver"  # torch in the test process is not fork-safe
use_git_change_detection = false
timeout_multiplier = 50.0  # a shared, loaded machine: a slow run is not a hang
TOML
  name=${module//\//.}
  echo "== $module: mutmut over ${TESTS[$module]} (scratch copy $work)"
  started=$(date +%s)
  # The mutated copy must be what the tests import: no PYTHONPATH into this tree (pytest's pythonpath
  # puts the scratch copy's mutants/ folder first).
  (cd "$work" && env -u PYTHONPATH mutmut run --max-children "$CHILDREN" > "$OUT/$name.log" 2>&1) || {
    echo "mutmut failed on $module; its output: $OUT/$name.log" >&2; tail -20 "$OUT/$name.log" >&2; exit 1; }
  (cd "$work" && env -u PYTHONPATH mutmut export-cicd-stats >/dev/null && cp mutants/mutmut-cicd-stats.json "$OUT/$name.json")
  (cd "$work" && env -u PYTHONPATH mutmut results > "$OUT/$name.survivors")
  seconds=$(( $(date +%s) - started ))
  rows+=("$(python3 - "$OUT/$name.json" "$module" "$seconds" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
judged = s["killed"] + s["survived"] + s["suspicious"]
rate = s["killed"] / judged if judged else float("nan")
print(f"{sys.argv[2]:<28} {s['total']:>6} {s['killed']:>7} {s['survived']:>9} {s['timeout']:>8} {s['no_tests']:>9} "
      f"{rate:>8.1%} {sys.argv[3]:>6}s")
PY
)")
  [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
done
printf '\n%-28s %6s %7s %9s %8s %9s %8s %7s\n' module total killed survived timeout no_tests "kill" time
for row in "${rows[@]}"; do echo "$row"; done
echo "kill = killed / (killed + survived + suspicious); timeouts apart (rerun them: mutmut run NAME in a KEEP=1 copy)"
echo "survivors and timeouts per module: $OUT/<module>.survivors"
