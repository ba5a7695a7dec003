#!/bin/sh
# Issues 2, 3, 8 and 9: walhook's RSS with 1M deliveries waiting in the ledger
# and a hanging endpoint (backlog), with one ~29 MB text value inserted and
# updated (bigrow: peak RSS / body size), with one UPDATE of many rows (bigtx).
# PostgreSQL runs with fsync = on, synchronous_commit = on.
# Usage: bench/memory.sh [--cases backlog,bigrow,bigtx] [--reps N] [more options, see --help]
set -eu
cd "$(dirname "$0")/.."
cargo build --release --bin walhook --example bench
target/release/examples/bench memory "$@"
