#!/usr/bin/env bash
# README command 1: set up (once) and run the main job — HIST on the built-in synthetic
# data with one CPU rank. Extra arguments go to hist-launch (e.g. --set train.epochs=3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo build --workspace --bins
exec target/debug/hist-launch --nproc 1 configs/demo.yaml "$@"
