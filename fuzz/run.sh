#!/bin/bash
# fuzz/run.sh: run the fuzz targets, each for a time, and report.
#
#   fuzz/run.sh [--seconds N] [--jobs J] [--merge] [--work DIR] [TARGET...]
#
# TARGETs are fuzz_* (libFuzzer, fuzz/c/, built by make -C fuzz with ASan and
# UBSan) and py_* (atheris, fuzz/py/fuzz_*.py); default: all. Each runs for N
# seconds (default 60) under nice -n 19, J at a time (default: all at once),
# starting from its corpus in fuzz/corpus/TARGET and keeping what it finds
# in fuzz/work/TARGET (not in git; --work names another directory, where
# logs and crashes go too). --merge then minimises work and corpus together
# back into fuzz/corpus/TARGET (libFuzzer -merge=1, on edges without hit
# counts, -use_counters=0, which keeps the corpus small).
# Crashes, leaks and timeouts are written to fuzz/crashes/TARGET-*, logs to
# fuzz/logs/TARGET.log.
# One line per target: executions, coverage (edges and features as
# libFuzzer counts them), corpus size, crashes of this run. Exit status 1 if
# any target crashed or did not run.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}
# libFuzzer's -merge re-runs argv[0]: for atheris that is the script itself,
# whose "#!/usr/bin/env python3" must find the virtualenv's python.
PATH=$(dirname "$PY"):$PATH
export PATH
SECONDS_EACH=60
JOBS=0
MERGE=0
WORK=fuzz/work
CRASHES=fuzz/crashes
LOGS=fuzz/logs
TARGETS=()
while [ $# -gt 0 ]; do
	case "$1" in
	--seconds) SECONDS_EACH=$2; shift 2 ;;
	--jobs) JOBS=$2; shift 2 ;;
	--merge) MERGE=1; shift ;;
	--work) WORK=$2; CRASHES=$2/crashes; LOGS=$2/logs; shift 2 ;;
	-h|--help) sed -n '2,20p' "$0"; exit 0 ;;
	*) TARGETS+=("$1"); shift ;;
	esac
done
if [ ${#TARGETS[@]} -eq 0 ]; then
	for f in fuzz/c/fuzz_*.c; do t=${f##*/}; TARGETS+=("${t%.c}"); done
	for f in fuzz/py/fuzz_*.py; do t=${f##*/fuzz_}; TARGETS+=("py_${t%.py}"); done
fi
[ "$JOBS" -gt 0 ] || JOBS=${#TARGETS[@]}

make -s -C fuzz -j2 >/dev/null || exit 1
mkdir -p "$WORK" "$CRASHES" "$LOGS"

# Per-target libFuzzer options: the largest input (frames up to 64 KiB for the
# parsers; rings and messages are smaller). Every input runs in well under a
# second; the 60 s per-input limit is generous because on a shared machine
# under nice a whole process can stall for over 10 s.
max_len() {
	case "$1" in
	fuzz_validate|fuzz_segment) echo 70000 ;;
	fuzz_tx|fuzz_rx|fuzz_hostile) echo 20000 ;;
	py_config) echo 8192 ;;
	*) echo 4096 ;;
	esac
}

command_of() {
	case "$1" in
	fuzz_*) echo "$ROOT/fuzz/build/$1" ;;
	py_*) echo "$PY $ROOT/fuzz/py/fuzz_${1#py_}.py" ;;
	esac
}

run_one() {
	local t=$1 log=$LOGS/$1.log
	mkdir -p "$WORK/$t" "fuzz/corpus/$t"
	local before
	before=$(ls "$CRASHES" | grep -c "^$t-" || true)
	# shellcheck disable=SC2046
	nice -n 19 $(command_of "$t") "$WORK/$t" "fuzz/corpus/$t" \
		-max_total_time="$SECONDS_EACH" -timeout=60 -rss_limit_mb=2560 \
		-max_len="$(max_len "$t")" -print_final_stats=1 \
		-artifact_prefix="$CRASHES/$t-" >"$log" 2>&1
	local rc=$?
	local after execs cov ft corpus
	after=$(ls "$CRASHES" | grep -c "^$t-" || true)
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
	ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
	# corpus: the committed inputs and those this and earlier runs added
	corpus=$(($(ls "$WORK/$t" | wc -l) + $(ls "fuzz/corpus/$t" | wc -l)))
	if [ "$MERGE" = 1 ] && [ "$rc" = 0 ]; then
		# Keep the crash-* regression inputs whatever the merge picks.
		mkdir -p "$WORK/$t.min"
		rm -f "$WORK/$t.min"/*
		nice -n 19 $(command_of "$t") -merge=1 -use_counters=0 -max_len="$(max_len "$t")" -timeout=60 \
			-rss_limit_mb=2560 "$WORK/$t.min" "fuzz/corpus/$t" "$WORK/$t" \
			>"$LOGS/$t.merge.log" 2>&1 &&
		[ -n "$(ls "$WORK/$t.min")" ] &&
		find "fuzz/corpus/$t" -type f ! -name 'crash-*' -delete &&
		cp "$WORK/$t.min"/* "fuzz/corpus/$t"/ &&
		corpus=$(ls "fuzz/corpus/$t" | wc -l)
	fi
	printf '%-16s executions %-10s coverage %s edges %s features  corpus %-5s crashes %s%s\n' \
		"$t" "${execs:-0}" "${cov:-0}" "${ft:-0}" "$corpus" "$((after - before))" \
		"$([ "$rc" = 0 ] || echo "  (exit $rc, see $log)")"
	[ "$rc" = 0 ] && [ "${execs:-0}" -gt 0 ]
}

pids=()
fail=0
for t in "${TARGETS[@]}"; do
	while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || fail=1; done
	run_one "$t" &
	pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail=1; done
exit $fail
