#!/bin/sh
# Issue 3: delivery throughput (dispatch), commit-to-arrival latency (latency)
# and memory with a large backlog (backlog).
# Usage: bench/dispatch.sh [dispatch|latency|backlog] [--reps N] [more options, see --help]
# Without a subcommand it runs all three with the given options.
set -eu
cd "$(dirname "$0")/.."
cargo build --release --bin walhook
case "${1:-}" in
dispatch | latency | backlog)
    sub=$1
    shift
    cargo run --release --example bench -- "$sub" "$@"
    ;;
*)
    cargo run --release --example bench -- dispatch "$@"
    cargo run --release --example bench -- latency "$@"
    cargo run --release --example bench -- backlog "$@"
    ;;
esac
