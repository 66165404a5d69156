#!/usr/bin/env bash
# Builds the GPU binaries — `p2pnode`, `bench_gpu` and the CPU-vs-GPU test
# binaries — with `--features cuda` on a machine with neither a GPU nor a
# CUDA driver, to run on one that has both (`scripts/gpu-check.sh` runs them
# there).
#
# nvcc, NVRTC and the CUDA runtime come from PyPI as in scripts/check-cuda.sh,
# cuBLAS and cuRAND too; the driver library is a stub with the driver's
# SONAME that only satisfies the linker: at run time the GPU machine's own
# libcuda.so.1 is loaded. Leaves the binaries in target/gpu/ and, packed,
# in target/gpu.tar.xz.
#
#   bash scripts/build-gpu.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${CUDA_VENV:-$HOME/.cache/p2ptrain-cuda/venv}
LINK=${CUDA_LINK:-$HOME/.cache/p2ptrain-cuda/link}
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
echo "installing the CUDA 13 toolkit and libraries from PyPI into $VENV" >&2
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
  nvidia-cublas==13.10.0.20 nvidia-curand==10.4.5.25
CUDA_HOME=$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')
export CUDA_HOME PATH="$CUDA_HOME/bin:$PATH" CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}

echo "building the libraries (candle's CUDA kernels take minutes the first time)" >&2
cargo build --release --features cuda -p p2ptrain-trainer

# The linker wants unversioned names; the driver is a stub made of every
# driver function cudarc calls.
mkdir -p "$LINK"
for lib in cublas.so.13 cublasLt.so.13 curand.so.10 nvrtc.so.13 cudart.so.13; do
  ln -sf "$CUDA_HOME/lib/lib$lib" "$LINK/lib${lib%%.so*}.so"
done
cudarc=$(ls -t target/release/deps/libcudarc-*.rlib | head -1)
nm -u "$cudarc" 2>/dev/null | awk '$2 ~ /^cu[A-Z]/ { print "void " $2 "(void) {}" }' | sort -u \
  > "$LINK/libcuda_stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$LINK/libcuda_stub.c"
export LIBRARY_PATH="$LINK${LIBRARY_PATH:+:$LIBRARY_PATH}"

echo "building p2pnode, bench_gpu and the test binaries" >&2
cargo build --release --features cuda -p p2ptrain-node --bin p2pnode
cargo build --release --features cuda -p p2ptrain-trainer --example bench_gpu
executables() { sed -n 's/.*Executable .*(\(.*\))$/\1/p'; }
tests=$(
  {
    cargo test --release --features cuda -p p2ptrain-trainer --test gpu_kernels --test update --no-run 2>&1
    cargo test --release --features cuda -p p2ptrain-kernels --test cuda --no-run 2>&1
  } | executables
)
rm -rf target/gpu && mkdir -p target/gpu
cp target/release/examples/bench_gpu target/release/p2pnode target/gpu/
for path in $tests; do
  name=$(basename "$path")
  cp "$path" "target/gpu/${name%-*}"
done
strip target/gpu/*
tar cf - -C target/gpu . | xz -T0 -6 > target/gpu.tar.xz
ls -l target/gpu target/gpu.tar.xz
