#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing, then formatting, lints,
# every crate's tests (real sockets, real files, sox) and the fuzz target's build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --no-fail-fast
if [ -f fuzz/Cargo.toml ]; then
  echo "== fuzz targets build"
  cargo check --quiet --manifest-path fuzz/Cargo.toml --bins
fi
echo "== benchmarks build"
cargo bench --workspace --no-run --quiet
