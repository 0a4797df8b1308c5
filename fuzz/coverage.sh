#!/bin/bash
# fuzz/coverage.sh: line coverage of csrc/ by the C fuzz targets' corpora.
#
#   fuzz/coverage.sh [llvm-cov report options]
# Corpus: fuzz/corpus/TARGET, and fuzz/work/TARGET when it exists.
# Builds fuzz/build/cov/* (clang -fprofile-instr-generate -fcoverage-mapping,
# no sanitizer), replays every corpus file of every fuzz_* target once
# (-runs=0), merges the profiles and prints `llvm-cov report` for csrc/
# (bench.c, which no daemon path uses, left out).
set -eu
cd "$(dirname "$0")/.."
ROOT=fuzz/corpus
make -s -C fuzz cov >/dev/null
OUT=fuzz/build/cov/profiles
rm -rf "$OUT"
mkdir -p "$OUT"
objs=()
for exe in fuzz/build/cov/fuzz_*; do
	t=${exe##*/}
	dirs=("$ROOT/$t")
	[ -d "fuzz/work/$t" ] && dirs+=("fuzz/work/$t")
	LLVM_PROFILE_FILE="$OUT/$t-%p.profraw" "$exe" -runs=0 "${dirs[@]}" >/dev/null 2>&1 || {
		echo "coverage: $t failed on its corpus" >&2
		exit 1
	}
	# The checksum loops are chosen at load time (AVX2 where the CPU has
	# it): replay the checksum-heavy targets with the portable ones too.
	case $t in
	fuzz_segment|fuzz_validate)
		VIONETD_CSUM_GENERIC=1 LLVM_PROFILE_FILE="$OUT/$t-generic-%p.profraw" \
			"$exe" -runs=0 "${dirs[@]}" >/dev/null 2>&1 ;;
	esac
	objs+=(-object "$exe")
done
llvm-profdata merge -sparse "$OUT"/*.profraw -o "$OUT/all.profdata"
# The first binary is the main object; the others add their mappings.
first=${objs[1]}
llvm-cov report "$first" "${objs[@]:2}" -instr-profile="$OUT/all.profdata" \
	-ignore-filename-regex='(fuzz/c/|^/usr/|csrc/bench)' "$@"
