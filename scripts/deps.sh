#!/usr/bin/env bash
# deps.sh — make sure the Debian packages qlab builds and tests with are installed (python3 + python3-numpy: test
# helpers compare binary files; openmpi-bin + libopenmpi-dev: `mpirun -np N qlab sense|stats`, built and tested
# when present). As root (or with password-less sudo) it installs what is missing; otherwise it prints the exact
# apt-get line.
set -eu
PKGS="build-essential pkg-config libopenblas-dev liblapacke-dev libcmocka-dev libjansson-dev libinih-dev
      libarchive-dev libncurses-dev libpcre2-dev python3 python3-numpy openmpi-bin libopenmpi-dev"
missing=()
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
line="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" = 0 ]; then SUDO=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo"
else
  echo "qlab: missing Debian packages. Run as root:" >&2
  echo "  apt-get update && $line" >&2
  exit 1
fi
echo "qlab: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO $line
