#!/usr/bin/env bash
# README command 2: set up (once) and run the whole test suite. .ci/run calls this.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo test --workspace --no-fail-fast "$@"
