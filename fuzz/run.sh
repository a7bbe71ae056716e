#!/usr/bin/env bash
# Builds the libFuzzer targets on STABLE Rust (no sanitizer, no nightly, no cargo-fuzz needed)
# and runs each for a bounded time from its committed seed corpus.
#   fuzz/run.sh                    # every target, FUZZ_SECONDS (default 60) each
#   fuzz/run.sh frame config       # some targets
#   FUZZ_SECONDS=600 fuzz/run.sh   # a long run
# First replays fuzz/regressions/<target>/ (inputs that once crashed). Seeds in
# fuzz/seeds/<target>/ are only read: new inputs go to a temp dir, crash files and logs to
# $FUZZ_OUT/<target>/ (default fuzz/target/fuzz-out). Exits non-zero on any crash, timeout,
# out-of-memory, failing regression, or a binary built without coverage instrumentation.
set -euo pipefail
cd "$(dirname "$0")"
SECS="${FUZZ_SECONDS:-60}"
[ "$SECS" -gt 0 ] || { echo "fuzz/run.sh: FUZZ_SECONDS must be > 0 (0 means forever to libFuzzer)" >&2; exit 2; }
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
OUT="${FUZZ_OUT:-$PWD/target/fuzz-out}"

# libfuzzer-sys compiles libFuzzer (C++) with the cc crate: it needs a C++ compiler.
command -v c++ >/dev/null || { echo "fuzz/run.sh: no C++ compiler (apt-get install -y g++)" >&2; exit 1; }

# The flags `cargo fuzz build --sanitizer none` passes (cargo-fuzz 0.13) but -Ccodegen-units=1,
# which Cargo.toml sets for the daemon's crate only. --target is required: without it RUSTFLAGS
# also reach build scripts and proc macros, which then fail to link (__sanitizer_cov_* missing).
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cdebug-assertions"
unset CARGO_ENCODED_RUSTFLAGS
t0=$(date +%s)
cargo build --locked --release --target "$TRIPLE" --bins
echo "== build: $(( $(date +%s) - t0 ))s"
BIN="${CARGO_TARGET_DIR:-$PWD/target}/$TRIPLE/release"

if [ "$#" -gt 0 ]; then targets=("$@"); else
  mapfile -t targets < <(awk '/^\[\[bin\]\]/{b=1} b&&/^name *=/{gsub(/^name *= *"|".*$/,""); print; b=0}' Cargo.toml); fi

status=0
for t in "${targets[@]}"; do
  rm -rf "${OUT:?}/$t"; mkdir -p "$OUT/$t"
  if compgen -G "regressions/$t/*" >/dev/null; then
    echo "== $t: replaying regressions/$t"
    "$BIN/$t" regressions/"$t"/* >"$OUT/$t/regressions.log" 2>&1 \
      || { echo "!! $t: a regression input fails; see $OUT/$t/regressions.log"; status=1; continue; }
  fi
  dict=()
  [ -f "dicts/$t.dict" ] && dict=(-dict="dicts/$t.dict")
  work="$(mktemp -d)"
  echo "== $t: fuzzing ${SECS}s from seeds/$t"
  rc=0
  "$BIN/$t" "$work" "seeds/$t" "${dict[@]}" -max_total_time="$SECS" -timeout=10 \
    -use_value_profile=1 -print_final_stats=1 -artifact_prefix="$OUT/$t/" \
    >"$OUT/$t/fuzz.log" 2>&1 || rc=$?
  # The seeds' coverage and the final state (cov: edges hit, ft: features, corp: corpus),
  # then the totals from -print_final_stats=1 (printed after a crash too).
  grep -E '^#[0-9]+[[:space:]]+INITED' "$OUT/$t/fuzz.log" || true
  grep -E '^#[0-9]+[[:space:]]' "$OUT/$t/fuzz.log" | tail -n 1 || true
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$OUT/$t/fuzz.log" || true
  rm -rf "$work"
  if grep -q 'Is the code instrumented for coverage' "$OUT/$t/fuzz.log"; then
    echo "!! $t: built without coverage instrumentation (RUSTFLAGS lost?)"; status=1
  fi
  if [ "$rc" -ne 0 ]; then
    echo "!! $t: libFuzzer exit $rc; input(s) kept:"; ls "$OUT/$t"/{crash,timeout,oom,leak}-* 2>/dev/null || true
    grep -E 'panicked at|^SUMMARY' "$OUT/$t/fuzz.log" || true
    echo "   reproduce: $BIN/$t FILE; once fixed, copy FILE to fuzz/regressions/$t/ (cargo test replays it)"
    status=1
  fi
done
echo "== fuzz/run.sh: $(( $(date +%s) - t0 ))s in all"
exit "$status"
