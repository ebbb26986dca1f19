#!/bin/sh
# Installs everything connthrottle needs to build, test and demo, from
# Debian 12 packages. Run as root (or through sudo). Idempotent.
set -eu

# libkrb5-dev: PostgreSQL's libpq/libpq-be.h, which the worker's admission
# hook needs (src/pg/admission.cc), includes gssapi.h.
PACKAGES="build-essential cmake git pkg-config clang-format
  libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev
  libpq-dev postgresql-15 postgresql-client-15 postgresql-server-dev-15 libkrb5-dev
  gnuplot-nox procps python3 spin"

missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "connthrottle: installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# PostgreSQL refuses to run as root: the servers that tests, the stress
# driver and the demo start run as this unprivileged user.
if [ "$(id -u)" = 0 ] && ! id connthrottle >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin connthrottle
fi
