#!/usr/bin/env bash
# Fill .devcarry/ (git-ignored through .git/info/exclude) with what gpu_check.sh needs offline:
#   - llama-cpp-python 0.3.36's sdist, trimmed: the PyPI sdist is 73 MiB, mostly its vendored
#     llama.cpp's git pack (.git, 38 MiB), vocab GGUFs (models/, 75 MiB raw) and docs/; none is
#     read by the build. What is left is repacked as llama_cpp_python-0.3.36.tar.gz (~8 MiB).
#   - pure-Python wheels the GPU image may lack: gguf (as in the dev venv), diskcache, pexpect,
#     ptyprocess; scikit-build-core and pathspec as fallbacks (installed only where missing).
# Usage (repo root, with network to PyPI): bash benchmarks/gpu/make_devcarry.sh [PIP]
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PIP=${1:-/work/venv/bin/pip}
cd "$REPO"
grep -qx '/.devcarry/' .git/info/exclude || echo '/.devcarry/' >> .git/info/exclude
mkdir -p .devcarry
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PIP" download -q --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d "$TMP"
tar xzf "$TMP"/llama_cpp_python-0.3.36.tar.gz -C "$TMP"
S=$TMP/llama_cpp_python-0.3.36
rm -rf "$S"/.git "$S"/.github "$S"/docker "$S"/vendor/llama.cpp/.git "$S"/vendor/llama.cpp/.github \
       "$S"/vendor/llama.cpp/.devops
for d in models docs media tools/ui benches examples tests gguf-py conversion pocs scripts; do
    rm -rf "$S/vendor/llama.cpp/$d"
done
tar -czf .devcarry/llama_cpp_python-0.3.36.tar.gz -C "$TMP" --sort=name --owner=0 --group=0 \
    --numeric-owner --mtime='2025-01-01' llama_cpp_python-0.3.36
"$PIP" download -q --no-deps --only-binary :all: gguf==0.19.0 diskcache==5.6.3 pexpect==4.9.0 \
    ptyprocess==0.7.0 scikit-build-core==1.1.2 pathspec==1.1.1 -d .devcarry
ls -la .devcarry
du -sh .devcarry benchmarks/gpu
