#!/usr/bin/env bash
# The README's main job three ways, each from an empty cache (benchmarks/results/search_load.md):
#   quiet  -- nothing else running;
#   hog    -- a busy loop on one core for the first 120 s (`timeout 120 python -c 'while True: pass'`);
#   duo    -- a second, identical search (own cache and output) running beside it.
# Then a quiet re-check of every candidate each run recorded over budget, and one summary table.
#
#   bash benchmarks/search_load.sh OUT_DIR [quiet|hog|duo ...]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: search_load.sh OUT_DIR [quiet|hog|duo ...]}
shift
scenarios=("${@:-quiet hog duo}")
# shellcheck disable=SC2206
scenarios=(${scenarios[@]})
mkdir -p "$out"
py=.venv/bin/python

search() {  # NAME: one main-job search into $out/NAME with its own empty cache; wall time logged
  local name=$1
  rm -rf "$out/$name" "$out/$name.cache"
  local start=$SECONDS
  ARCHGEN_CACHE="$out/$name.cache" .venv/bin/archgen search examples/hybrid.yaml --budget 90% \
    --quick -o "$out/$name" >"$out/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc, $((SECONDS - start)) s wall" | tee -a "$out/times.txt"
}

runs=()
for s in "${scenarios[@]}"; do
  case $s in
    quiet*) search "$s"; runs+=("$out/$s") ;;
    hog)
      timeout 120 "$py" -c 'while True: pass' &
      search hog
      wait
      runs+=("$out/hog")
      ;;
    duo)
      search duo-b &
      search duo
      wait
      runs+=("$out/duo" "$out/duo-b")
      ;;
    *) echo "unknown scenario $s" >&2; exit 2 ;;
  esac
done
for r in "${runs[@]}"; do
  [[ -f $r/report.json ]] && "$py" -m benchmarks.search_load recheck "$r" | tee -a "$out/recheck.txt"
done
reports=()
for r in "${runs[@]}"; do [[ -f $r/report.json ]] && reports+=("$r"); done
"$py" -m benchmarks.search_load summary "${reports[@]}" | tee "$out/summary.md"
