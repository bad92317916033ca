#!/usr/bin/env bash
# Runs the receiver with its embedded defaults (UDP 127.0.0.1:9527, recordings
# in ./recordings). Extra arguments go to udp_server, e.g. --listen 0.0.0.0:9527.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo run --release -p udp_server -- "$@"
