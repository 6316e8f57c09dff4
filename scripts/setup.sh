#!/usr/bin/env bash
# Sets up a fresh Debian machine for memfabric: the Debian packages the interop tests and
# benchmarks drive (NBD clients and servers nobody here wrote), then the npm packages.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package that provides it
declare -A NEED=(
  [nbdinfo]=libnbd-bin
  [nbdcopy]=libnbd-bin
  [qemu-io]=qemu-utils
  [qemu-img]=qemu-utils
  [fio]=fio
  [nbdkit]=nbdkit
  [openssl]=openssl
  [etcd]=etcd-server
  [chromium]=chromium
)
missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  echo "setup: installing Debian packages: $pkgs"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  # Debian starts a system etcd on 127.0.0.1:2379 when it installs etcd-server. Nothing here
  # uses it (the fleet tests start their own members on free ports): stop what we just started.
  if [[ " $pkgs " == *" etcd-server "* ]] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error
fi
