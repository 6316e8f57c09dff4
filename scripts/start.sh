#!/usr/bin/env bash
# The main job on a fresh Debian machine: set up, then run a memory appliance with embedded
# defaults (1 GiB of memory, a default region, NBD on 127.0.0.1:10809, dashboard on
# http://127.0.0.1:10880/). Extra arguments go to `memfabric appliance`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node bin/memfabric.js appliance "$@"
