#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what is missing
# (PostgreSQL, wal2json, Chromium), then runs every test. Extra arguments go
# to `cargo test` (e.g. `scripts/test.sh --test capture`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --browser
cargo test --locked --all-targets "$@"
