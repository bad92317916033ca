#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing, then formatting, lints
# (clippy --all-targets also type-checks the benchmarks), every crate's tests
# (real sockets, real files, sox, sipp, tshark, tcpreplay, network namespaces
# when run as root), mod_rst's queue under loom, and the fuzz targets' build.
# Tests that need a real FreeSWITCH run when FREESWITCH_PREFIX is set, and say
# SKIPPED otherwise. Last, the docker-compose stack (scripts/docker-test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
# A run of the suite builds once: incremental state would only add gigabytes on disk.
export CARGO_INCREMENTAL=0

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --no-fail-fast
# mod_rst's queue from the media threads, model-checked by loom (its own
# cfg, so its own target folder: the main one's builds stay as they are).
echo "== loom: mod_rst's queue"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
  cargo test --quiet -p mod_rst --release --lib queue::
if [ -f fuzz/Cargo.toml ]; then
  echo "== fuzz targets build"
  cargo check --quiet --manifest-path fuzz/Cargo.toml --locked --bins
fi
# The docker-compose stack (receiver, tap_daemon and sipp in containers; FreeSWITCH
# too when FREESWITCH_SRC names its source): it needs root for docker and debootstrap.
if [ "$(id -u)" -eq 0 ]; then
  echo "== docker test stack"
  bash scripts/docker-test.sh
else
  echo "== docker test stack: SKIPPED (needs root: sudo bash scripts/docker-test.sh)"
fi
