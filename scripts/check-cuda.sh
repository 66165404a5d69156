#!/usr/bin/env bash
# Builds and lints the `cuda` feature on a machine without a GPU: candle's
# CUDA backend runs nvcc at build time, so this installs nvcc and the CUDA
# headers (13.0, matching `--features cuda`'s cudarc) from PyPI into a cached
# virtual environment, then runs clippy on the crates that have the feature.
# Nothing here needs a GPU or its driver; `.ci/run` calls it.
#
#   bash scripts/check-cuda.sh
#
# CUDA_VENV (default ~/.cache/p2ptrain-cuda/venv) is where the toolkit goes;
# CUDA_COMPUTE_CAP (default 90, Hopper) is the GPU generation candle builds for.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${CUDA_VENV:-$HOME/.cache/p2ptrain-cuda/venv}
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
CUDA_HOME=$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH" CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
nvcc --version | tail -1
cargo clippy -p p2ptrain-kernels -p p2ptrain-trainer --features cuda --all-targets -- -D warnings
