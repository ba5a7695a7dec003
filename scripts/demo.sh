#!/usr/bin/env bash
# The embedded demo: installs PostgreSQL if missing, builds walhook and runs
# `walhook demo` (a throwaway cluster, a receiver, live deliveries).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo run --release --locked --quiet -- demo "$@"
