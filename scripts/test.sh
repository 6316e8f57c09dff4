#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: set up, lint, type-check, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
npx eslint .
npx prettier --check .
npx tsc -p tsconfig.json --noEmit
node scripts/run-tests.mjs "$@"
