#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of the two parsers that read untrusted bytes:
#   decode     the pipeline's decoder (every Kafka record value)
#   post_body  the whole body check of POST /api/feedback
# Each runs for LIKERATE_FUZZ_SECS seconds (default 60), starting from the seeds in
# fuzz/corpus/<target> (read only: libFuzzer writes the inputs it finds to the first corpus
# folder only, which is a scratch corpus under the state folder, kept between runs).
# A crash, a timeout (10 s) or 2 GiB of memory fails the script and leaves the input in
# fuzz/artifacts/<target>/ (not tracked: add it to fuzz/corpus/<target> as a regression seed
# once fixed). The build lives in ${XDG_CACHE_HOME:-~/.cache}/likerate/fuzz-target, so a fresh
# clone reuses it.
# Installs what it needs at user level: rustup's nightly toolchain (cargo-fuzz needs it for
# the sanitizer flags) and cargo-fuzz from crates.io into ~/.cargo/bin.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/lib.sh"
ROOT="$(cd "$HERE/../.." && pwd)"
SECS="${LIKERATE_FUZZ_SECS:-60}"
TARGET_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/likerate/fuzz-target"
export PATH="$HOME/.cargo/bin:$PATH"

command -v rustup >/dev/null || die "rustup is required (https://rustup.rs)"
if ! rustup toolchain list | grep -q '^nightly'; then
  say "installing the nightly toolchain (once)"
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null; then
  say "installing cargo-fuzz (once)"
  cargo install cargo-fuzz --locked
fi

cd "$ROOT"
for target in decode post_body; do
  work="$STATE_DIR/fuzz-corpus/$target"
  mkdir -p "$work"
  say "fuzzing $target for ${SECS}s"
  # -rss_limit_mb: a parser that balloons on a small input is a finding too.
  cargo +nightly fuzz run --target-dir "$TARGET_DIR" "$target" "$work" "fuzz/corpus/$target" -- \
    -max_total_time="$SECS" -max_len=300000 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
done
say "fuzzing found nothing"
