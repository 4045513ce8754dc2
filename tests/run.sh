#!/usr/bin/env bash
# The whole test suite: unit and conformance tests, multi-process tests and
# the Linux kernel host guest suite (tests/vm). Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast
if [ -x tests/vm/run.sh ]; then
  tests/vm/run.sh
fi
