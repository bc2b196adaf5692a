#!/usr/bin/env bash
# The README's main job as a new user runs it, N times in a row (issue 17's "5 runs out of 5"):
# each run from a fresh clone of REPO, set-up into an empty .venv, an empty ARCHGEN_CACHE, and
# nothing else started by this script. Each run's wall times (set-up, search) and exit code go
# to OUT_DIR/times.txt; the summary table (benchmarks/search_load.py) to OUT_DIR/summary.md.
#
#   bash benchmarks/main_job_fresh.sh REPO OUT_DIR [N=5]
set -uo pipefail
repo=$(cd "${1:?usage: main_job_fresh.sh REPO OUT_DIR [N]}" && pwd)
out=$(mkdir -p "${2:?usage: main_job_fresh.sh REPO OUT_DIR [N]}" && cd "$2" && pwd)
n=${3:-5}
commit=$(git -C "$repo" rev-parse HEAD)  # every run at the commit the script started on
echo "# $(date -u +%FT%TZ) ${commit:0:7} on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" |
  tee -a "$out/times.txt"
runs=()
for i in $(seq 1 "$n"); do
  clone="$out/clone-$i"
  rm -rf "$clone"
  git clone -q "$repo" "$clone" && git -C "$clone" checkout -q "$commit"
  start=$SECONDS
  (cd "$clone" && bash scripts/setup.sh >"$out/setup-$i.log" 2>&1)
  setup_rc=$?
  setup_s=$((SECONDS - start))
  start=$SECONDS
  (cd "$clone" && ARCHGEN_CACHE="$out/cache-$i" .venv/bin/archgen search examples/hybrid.yaml \
    --budget 90% --quick -o runs/search-hybrid >"$out/search-$i.log" 2>&1)
  rc=$?
  echo "run $i: set-up exit $setup_rc in ${setup_s} s; search exit $rc in $((SECONDS - start)) s; load $(cut -d' ' -f1-3 /proc/loadavg)" |
    tee -a "$out/times.txt"
  [[ -f $clone/runs/search-hybrid/report.json ]] && runs+=("$clone/runs/search-hybrid")
  rm -rf "$out/cache-$i"
done
(cd "$repo" && .venv/bin/python -m benchmarks.search_load summary "${runs[@]}") | tee "$out/summary.md"
