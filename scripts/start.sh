#!/usr/bin/env bash
# The main job on a fresh Debian machine: set up, then run memfabric.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node bin/memfabric.js demo "$@"
