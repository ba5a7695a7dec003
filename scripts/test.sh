#!/usr/bin/env bash
# Runs walhook's whole test suite on this machine: installs missing system
# packages (scripts/install-deps.sh), then the unit and integration tests.
# Extra arguments go to `cargo test`, e.g. a test name filter and test
# harness flags: `scripts/test.sh hard_kill -- --nocapture`.
# Exits with cargo's status.
#
# The integration tests are one binary (tests/it). Its PostgreSQL clusters
# are stopped and deleted by their watchdogs when it exits, even after a
# crash or Ctrl-C, so there is nothing to clean up here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh --browser
# The crate has no doc tests (examples live in tests/), so --all-targets is
# everything; a separate `cargo test --doc` would only end the output with
# "0 passed".
exec cargo test --all-targets --locked "$@"
