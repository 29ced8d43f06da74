#!/usr/bin/env bash
# Builds what scripts/gpu_check.sh runs on a GPU machine that has python3 with torch 2.11
# but no Rust toolchain and perhaps not this machine's system libraries:
#   target/gpu/hist       the worker, stripped (~14 MB)
#   target/gpu/lib/       the shared libraries it needs beyond glibc, libstdc++ and libtorch
#                         (libjpeg.so.62: Debian's libjpeg-turbo soname; Ubuntu ships .so.8)
# Then carry target/gpu and run `scripts/gpu_check.sh target/gpu/hist` there; the check
# puts target/gpu/lib on LD_LIBRARY_PATH after torch's own lib folder.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --bin hist
rm -rf target/gpu
mkdir -p target/gpu/lib
strip -o target/gpu/hist target/debug/hist
# Everything ldd resolves outside torch's folder, glibc, libstdc++ and libgcc travels.
ldd target/debug/hist | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r name path; do
    case "$name" in
        libc.so.*|libm.so.*|libdl.so.*|libpthread.so.*|librt.so.*|libutil.so.*|ld-linux*|libstdc++.so.*|libgcc_s.so.*) continue ;;
    esac
    case "$path" in
        */site-packages/torch/lib/*) continue ;;
    esac
    cp -L "$path" "target/gpu/lib/$name"
    echo "bundled $name ($path)"
done
du -sh target/gpu
