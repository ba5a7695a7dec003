#!/usr/bin/env bash
# Installs the system packages walhook's test suite needs, and nothing when
# they are already there: PostgreSQL server programs (initdb, pg_ctl,
# postgres), the wal2json output plugin, a C compiler for the Rust build and,
# with --browser, chromium. Uses apt-get (Debian/Ubuntu) as root or through
# password-less sudo; otherwise prints what to install and fails.
# Safe to run repeatedly, without a terminal, and under CI=true.
set -euo pipefail

browser=0
for arg in "$@"; do
  case "$arg" in
    --browser) browser=1 ;;
    -h | --help) sed -n '2,7s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "install-deps: unknown argument: $arg (known: --browser)" >&2; exit 2 ;;
  esac
done

say() { echo "install-deps: $*"; }

has_server() { [ -n "$1" ] && [ -x "$1/initdb" ] && [ -x "$1/pg_ctl" ] && [ -x "$1/postgres" ]; }

# The directory of the server programs, searched like src/embedded.rs does:
# $WALHOOK_PG_BIN, the highest /usr/lib/postgresql/*/bin, then PATH.
pg_bin_dir() {
  if [ -n "${WALHOOK_PG_BIN:-}" ]; then echo "$WALHOOK_PG_BIN"; return; fi
  local dir initdb
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if has_server "$dir"; then echo "$dir"; return; fi
  done
  initdb=$(command -v initdb 2>/dev/null) || return 0
  dirname "$(readlink -f "$initdb")"
}

# Fills $missing with the packages to install and $pg_dir with the server's
# directory (empty when there is none).
check() {
  missing=()
  pg_dir=$(pg_bin_dir)
  if has_server "$pg_dir"; then
    local version major libdir
    version=$("$pg_dir/postgres" --version | awk '{print $3}')
    major=${version%%.*}
    if [ -x "$pg_dir/pg_config" ]; then libdir=$("$pg_dir/pg_config" --pkglibdir); else libdir="$pg_dir/../lib"; fi
    [ -f "$libdir/wal2json.so" ] || missing+=("postgresql-$major-wal2json")
  else
    pg_dir=""
    missing+=(postgresql-server postgresql-server-wal2json)
  fi
  command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
  if [ "$browser" = 1 ] && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    missing+=(chromium)
  fi
  if [ "$browser" = 1 ] && ! command -v chromedriver >/dev/null 2>&1; then
    missing+=(chromium-driver)
  fi
}

check
if [ ${#missing[@]} -eq 0 ]; then
  say "all present (PostgreSQL programs in $pg_dir)"
  exit 0
fi

# "postgresql-server" stands for the distribution's postgresql-NN: 15 where
# available, else the newest packaged one.
want_server() { [[ " ${missing[*]} " == *" postgresql-server "* ]]; }
display_pkgs() { local s="${missing[*]}"; echo "${s//postgresql-server/postgresql-15}"; }

if [ "$(id -u)" = 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  sudo=(none)
fi
if ! command -v apt-get >/dev/null 2>&1 || [ "${sudo[0]:-}" = none ]; then
  echo "install-deps: missing: $(display_pkgs)" >&2
  echo "install-deps: as root on Debian/Ubuntu run: apt-get install --no-install-recommends $(display_pkgs)" >&2
  echo "install-deps: elsewhere install a PostgreSQL (>= 14) server with wal2json and set WALHOOK_PG_BIN to its bin directory." >&2
  exit 1
fi

apt() { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dpkg::Use-Pty=0 "$@"; }

say "updating the apt package lists"
apt update
if want_server; then
  major=""
  for candidate in 15 17 16 14; do
    if apt-cache show "postgresql-$candidate-wal2json" >/dev/null 2>&1; then major=$candidate; break; fi
  done
  if [ -z "$major" ]; then
    echo "install-deps: apt offers no postgresql-NN-wal2json package (tried 15, 17, 16, 14)." >&2
    exit 1
  fi
  missing=("${missing[@]/#postgresql-server-wal2json/postgresql-$major-wal2json}")
  missing=("${missing[@]/#postgresql-server/postgresql-$major}")
fi
say "installing ${missing[*]}"
apt install --no-install-recommends "${missing[@]}"

check
if [ ${#missing[@]} -ne 0 ]; then
  echo "install-deps: still missing after apt-get install: $(display_pkgs)" >&2
  exit 1
fi
say "all present (PostgreSQL programs in $pg_dir)"
