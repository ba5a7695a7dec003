#!/usr/bin/env bash
# Runs walhook's whole test suite on this machine: installs missing system
# packages (scripts/install-deps.sh) and the other PostgreSQL versions
# (scripts/install-pg.sh, listed in scripts/pg-versions), runs every unit and
# integration test on the distribution's PostgreSQL 15, then the suites that
# talk to the server (capture, dispatch, crash, setup, fast path, custom
# events, schema drift, backfill, TLS, least privilege, failover) on each
# other version. The failover suite promotes a
# standby on 17 and later (on 14 and 16 it checks the clear refusal, and runs
# the promotion on the newest installed build).
#
# Extra arguments go to `cargo test` for the PostgreSQL 15 run only and skip
# the other versions, e.g. a test name filter and harness flags:
# `scripts/test.sh hard_kill -- --nocapture`.
#
# Each test binary's PostgreSQL clusters are stopped and deleted by their
# watchdogs when the binary exits, even after a crash or Ctrl-C, so there is
# nothing to clean up here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh --browser
# The crate has no doc tests (examples live in tests/), so --all-targets is
# everything; a separate `cargo test --doc` would only end the output with
# "0 passed".
cargo test --all-targets --locked "$@"
if [ $# -gt 0 ]; then
  exit 0
fi

# The same suites on every other supported version.
suites=(capture:: dispatch:: crash:: setup_errors:: fast_path:: custom_events:: drift:: backfill:: tls:: privilege:: failover::)
for bin in $(scripts/install-pg.sh); do
  version=$("$bin/postgres" --version | awk '{print $3}')
  echo "== PostgreSQL $version: ${suites[*]}"
  WALHOOK_PG_BIN="$PWD/$bin" cargo test --locked --test it -- "${suites[@]}"
done
