#!/usr/bin/env bash
# Everything about the GPU backend that needs a real GPU, in one run of under 6 minutes:
#   1. the GPU model and the versions of the driver, CUDA, CuPy and PyTorch;
#   2. the kernel tests on both backends (tests/test_kernels.py: CuPy and the CPU harness) and
#      the NVRTC compile check (tests/test_kernel_compile.py);
#   3. `alexnet kernels --check --backend cupy`, one row per kernel;
#   4. bench/gpu_step.py: a full AlexNet step against NumPy, then batch-128 speed against PyTorch
#      and LRN against PyTorch's, all figures in $OUT/gpu_step.json.
# Every log goes to $OUT (default ./gpu_out). Runs from a source checkout (no install needed:
# the GPU machines have no network); needs numpy, pytest, cupy and torch importable.
# Exit status: the number of failed parts (0 = all passed).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export ALEXNET_KERNEL_CACHE="${TMPDIR:-/tmp}/alexnet-kernels"
export ALEXNET_REQUIRE_CUDA=1  # here a skipped CuPy backend is a failure
PY=${PYTHON:-python3}
# The NumPy reference splits batches over threads with threadpoolctl; without it, one thread.
$PY -c "import threadpoolctl" 2>/dev/null || export ALEXNET_THREADS=1

failed=0
part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.txt, count failures
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "== $name FAILED (exit $rc)"; failed=$((failed + 1)); }
}

part versions 30 bash -c "nvidia-smi; $PY - <<'EOF'
import sys, numpy
print('python', sys.version.split()[0], 'numpy', numpy.__version__)
import cupy
print('cupy', cupy.__version__, 'CUDA runtime', cupy.cuda.runtime.runtimeGetVersion(),
      'driver', cupy.cuda.runtime.driverGetVersion(), 'NVRTC', cupy.cuda.nvrtc.getVersion())
print('device', cupy.cuda.runtime.getDeviceProperties(0)['name'].decode())
import torch
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version())
EOF"
part kernel_tests 120 $PY -m pytest -q -rs tests/test_kernels.py tests/test_kernel_compile.py
part kernels_check 40 $PY -m engine.cli kernels --check --backend cupy
part gpu_step 150 $PY bench/gpu_step.py --out "$OUT"

echo "gpu_check: $failed part(s) failed; logs and gpu_step.json in $OUT"
exit "$failed"
