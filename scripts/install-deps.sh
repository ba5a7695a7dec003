#!/usr/bin/env bash
# Installs what walhook's demo and tests need on a Debian/Ubuntu machine, only
# when missing: the PostgreSQL server (initdb, pg_ctl, pg_recvlogical), the
# wal2json plugin (an independent oracle in the crash test) and, with
# --browser, Chromium + ChromeDriver for the history-page test.
# Idempotent; prints what it installs; works without a TTY (CI=true).
set -euo pipefail

want_browser=0
want_wal2json=1
for arg in "$@"; do
  case "$arg" in
    --browser) want_browser=1 ;;
    --no-wal2json) want_wal2json=0 ;;
    *) echo "install-deps: unknown option $arg" >&2; exit 2 ;;
  esac
done

pg_bin() {
  if [ -n "${WALHOOK_PG_BIN:-}" ] && [ -x "$WALHOOK_PG_BIN/initdb" ]; then return 0; fi
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

missing=()
pg_bin || missing+=(postgresql-15)
if [ "$want_wal2json" = 1 ] && ! ls /usr/lib/postgresql/*/lib/wal2json.so >/dev/null 2>&1; then
  missing+=(postgresql-15-wal2json)
fi
if [ "$want_browser" = 1 ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
fi

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: missing ${missing[*]}, and this is not a Debian/Ubuntu system." >&2
  echo "Install the PostgreSQL server (and wal2json) with your package manager, or set WALHOOK_PG_BIN to the directory holding initdb and pg_ctl." >&2
  exit 1
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "install-deps: missing ${missing[*]}; run as root or install them: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
