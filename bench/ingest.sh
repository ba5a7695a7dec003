#!/bin/sh
# Issues 2 and 9: capture of a committed backlog into the ledger
# (`run --no-dispatch`: every delivery spills, the ingest path) and without
# an endpoint (decode + map only), against pg_recvlogical draining the same
# changes; with the ledger in the source database and in a separate one.
# PostgreSQL runs with fsync = on, synchronous_commit = on.
# Usage: bench/ingest.sh [--reps N] [more options, see --help]
set -eu
cd "$(dirname "$0")/.."
cargo build --release --bin walhook --example bench
target/release/examples/bench ingest "$@"
