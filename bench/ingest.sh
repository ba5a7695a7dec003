#!/bin/sh
# Issue 2: capture throughput (ingest) and memory on one huge transaction (bigtx).
# Usage: bench/ingest.sh [ingest|bigtx] [--reps N] [more options, see --help]
# Without a subcommand it runs both with the given options.
set -eu
cd "$(dirname "$0")/.."
cargo build --release --bin walhook
case "${1:-}" in
ingest | bigtx)
    sub=$1
    shift
    cargo run --release --example bench -- "$sub" "$@"
    ;;
*)
    cargo run --release --example bench -- ingest "$@"
    cargo run --release --example bench -- bigtx "$@"
    ;;
esac
