#!/bin/sh
# Issue 9: end-to-end signed deliveries/s beside the HTTP-only ceiling and
# pg_recvlogical, the application's load time with walhook stopped and
# running, walhook's RSS meanwhile (dispatch); commit -> delivery latency at
# 1,000 single-row commits/s (latency). Both with the ledger in the source
# database and in a separate one (--ledger source|separate|both).
# PostgreSQL runs with fsync = on, synchronous_commit = on.
# Usage: bench/dispatch.sh [dispatch|latency] [--reps N] [more options, see --help]
# Without a subcommand it runs both with the given options.
set -eu
cd "$(dirname "$0")/.."
cargo build --release --bin walhook --example bench
bench=target/release/examples/bench
case "${1:-}" in
dispatch | latency)
    sub=$1
    shift
    "$bench" "$sub" "$@"
    ;;
*)
    "$bench" dispatch "$@"
    "$bench" latency "$@"
    ;;
esac
