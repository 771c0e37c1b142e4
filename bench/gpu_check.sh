#!/usr/bin/env bash
# Everything about the GPU backend that needs a real GPU, in one run of at most 5 minutes on an
# H100/H200. GPU machines are lent rarely and have no network, so this runs blind: every part is
# time-limited, reports pass, FAILED or skipped (with the reason), and leaves its log in $OUT.
#
#   bash bench/gpu_check.sh [--cpu]          OUT=DIR (default ./gpu_out), PYTHON=interpreter
#
# Parts, in the order they run (the most telling first, the sanitizers last):
#   versions       the GPU, driver and CUDA; Python, NumPy, CuPy, PyTorch
#   package        install the checkout offline (pip --no-deps --no-build-isolation --no-index -e .,
#                  which can neither download nor replace the CuPy that is there); if pip fails,
#                  a folder of links $TMP/site/alexnet/<floor> -> ./<floor> on PYTHONPATH
#                  (CPU mode installs nothing: it uses the links only if alexnet does not import)
#   kernel_tests   tests/test_kernels.py, tests/test_edge_cases.py (float32's edges: large values,
#                  ties, subnormals, NaN), tests/test_kernel_indexing.py (carried indices under odd
#                  launches) on every backend + tests/test_kernel_compile.py (NVRTC);
#                  ALEXNET_REQUIRE_CUDA=1, so a skipped CuPy backend fails (CPU mode: collected only)
#   gpu_step       bench/gpu_step.py: a full step against NumPy float64 and tf32/bf16 steps against
#                  fp32, a probe of the products' arithmetic; the batch-128 step in fp32, tf32 and
#                  bf16 (CUDA graph and eager) against PyTorch's fastest configuration of each; graph
#                  replays against eager steps (the same bits); LRN against PyTorch's
#   gpu_train      bench/gpu_train.py: a synthetic prepared dataset of 10,000 256x256 images, the
#                  loader's images/s per core, the step alone, one epoch with validation end to end
#                  (GPU input pipeline, graphs, bf16): images/s, data_wait; end_to_end in gpu_step.json
#   precision_train (GPU) the demo model 4 epochs (312 steps) in fp32 and in bf16: the bf16 loss
#                  curve within a band of the fp32 one (tests/test_precision.py does a small one on
#                  the CPU harness)
#   train          alexnet train --device cuda --precision bf16 on the built-in demo data (CUDA
#                  graphs): 15 steps, stop, resume, 15 more
#   mpi_train      10 steps as one MPI rank (mpiexec -n 1: the data-parallel path, gradients by NCCL)
#                  against 10 steps of one process from the same start: the weights must agree;
#                  skipped, saying why, where mpi4py or mpiexec is missing (pip install -e '.[mpi]')
#   mpi_two_ranks  (GPU) the same with 2 ranks sharing the GPU (gradients staged through host
#                  memory, summed by MPI): the weights within 1e-2 of one process's
#   mpi_towers     (GPU) the same with --parallel towers: the paper's two towers on the 2 ranks
#   gpu_kernels    bench/gpu_kernels.py: every kernel at AlexNet batch-128 shapes against CuPy's own
#                  operations, rerun on a 7-block grid (bit-identical), a step run thrice (bit-identical)
#   kernels_check  alexnet kernels --check --backend cupy
#   gpu_gemm       bench/gpu_gemm.py: the conv products through cuBLAS against float64 (float32 or
#                  TF32?), and a whole AlexNet step at batch 8 against float64 with a float32 control
#   memcheck       compute-sanitizer --tool memcheck over bench/gpu_kernels.py --small
#   racecheck      compute-sanitizer --tool racecheck over the same
#
# CPU mode (--cpu, or automatic when no GPU is usable, saying why): every part that can runs on
# the CPU harness and NumPy (kernel tests with the harness backend, `kernels --check --backend
# cpu-harness`, gpu_kernels.py, gpu_step.py and gpu_train.py on the harness with small shapes,
# training on --device cpu on a tiny folder), nothing is installed, and the parts that need a GPU say
# skipped. tests/test_gpu_check.py runs it in CI, so a broken import or path in this script shows
# up before a GPU session is spent on it. One exception to "automatic": where nvidia-smi lists a
# GPU that CuPy cannot use, a part named gpu fails, so a lent machine never comes back all-passed.
#
# $OUT gets <part>.txt for every part, gpu_kernels*.json and gpu_step.json from the bench scripts,
# train_log.jsonl, and summary.txt: one line per part, "name<TAB>status<TAB>seconds<TAB>detail".
# The whole run keeps within GPU_CHECK_BUDGET seconds (default 300). GPU_CHECK_PARTS="a b ..." runs
# only those parts (versions and package always run); the others say skipped. Exit status: the
# number of failed parts (0 = all passed or skipped).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=gpu
REQUESTED=gpu
for arg in "$@"; do
    case $arg in
        --cpu) MODE=cpu REQUESTED=cpu ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check: unknown argument $arg (usage: bash bench/gpu_check.sh [--cpu])" >&2; exit 2 ;;
    esac
done
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
export PYTHONUNBUFFERED=1 OUT
# The whole run stays within 5 minutes even when parts hang: each part's limit is cut to what is
# left of this budget, and a part with under 20 s left fails without starting.
BUDGET=${GPU_CHECK_BUDGET:-300}
: > "$OUT/summary.txt"
failed=0

say() { echo "gpu_check: $*"; }
record() {  # record NAME STATUS SECONDS DETAIL: one line of summary.txt, and the count of failures
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$OUT/summary.txt"
    case $2 in FAILED) failed=$((failed + 1)) ;; esac
}
skip() {  # skip NAME REASON
    echo "== $1 skipped: $2"
    echo "skipped: $2" > "$OUT/$1.txt"
    record "$1" skipped 0 "$2"
}
run_logged() {  # run_logged NAME LIMIT COMMAND...: the command under `timeout`, output to the screen
    local name=$1 limit=$2     # and $OUT/NAME.txt (appended); sets RC (124: timed out)
    shift 2
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$OUT/$name.txt"
    RC=${PIPESTATUS[0]}
}
limit_for() {  # limit_for SECONDS: the part's limit, cut to the budget left; sets LIMIT (0: none left)
    local left=$((BUDGET - SECONDS))
    LIMIT=$(( $1 < left ? $1 : left ))
    [ "$LIMIT" -ge 20 ] || LIMIT=0
}
finish() {  # finish NAME T0 [DETAIL]: record pass or FAILED from RC
    local secs=$((SECONDS - $2)) detail=${3:-}
    if [ "$RC" -eq 0 ]; then
        echo "== $1 pass (${secs} s)${detail:+: $detail}"
        record "$1" pass "$secs" "$detail"
    else
        case $RC in
            124|137) detail="timed out after $LIMIT s${detail:+; $detail}" ;;
            *) detail="exit $RC${detail:+; $detail}" ;;
        esac
        echo "== $1 FAILED ($detail)"
        record "$1" FAILED "$secs" "$detail"
    fi
}
part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.txt, record
    local name=$1 t0=$SECONDS
    if [ -n "${GPU_CHECK_PARTS:-}" ] && [ "$name" != versions ] && [[ " $GPU_CHECK_PARTS " != *" $name "* ]]; then
        skip "$name" "not in GPU_CHECK_PARTS"
        return
    fi
    limit_for "$2"
    shift 2
    : > "$OUT/$name.txt"
    if [ "$LIMIT" -eq 0 ]; then
        echo "== $name FAILED (not started: the $BUDGET s budget is spent)"
        record "$name" FAILED 0 "not started: the $BUDGET s budget is spent"
        return
    fi
    echo "== $name (limit $LIMIT s)"
    run_logged "$name" "$LIMIT" "$@"
    finish "$name" "$t0"
}

# ---- which mode ----------------------------------------------------------------------------------
gpu_count() {  # the number of GPUs nvidia-smi lists (0 without nvidia-smi or a driver)
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi -L 2> /dev/null | grep -c '^GPU '
    else
        echo 0
    fi
}
if [ "$MODE" = gpu ]; then
    PY=${PYTHON:-python3}
    # CuPy must import, see a device and run a kernel (compiled by NVRTC) for GPU mode to mean anything
    probe=$("$PY" - 2>&1 <<'EOF'
import sys
try:
    import cupy
except Exception as e:
    sys.exit(f"CuPy does not import ({type(e).__name__}: {e})".splitlines()[0])
try:
    n = cupy.cuda.runtime.getDeviceCount()
    assert n > 0, "CuPy sees no CUDA device"
    assert int(cupy.arange(5, dtype=cupy.float32).sum()) == 10, "a CuPy kernel computed a wrong sum"
except Exception as e:
    sys.exit(f"CuPy cannot use a GPU ({type(e).__name__}: {e})".splitlines()[0])
print(f"CuPy {cupy.__version__} sees {n} GPU(s)")
EOF
    )
    if [ $? -eq 0 ]; then
        say "GPU mode: $probe"
    else
        MODE=cpu
        gpus=$(gpu_count)
        if [ "$gpus" -gt 0 ]; then
            # A lent GPU machine whose CuPy cannot use its GPU must not come back as all-passed.
            echo "== gpu FAILED (nvidia-smi lists $gpus GPU(s) but $probe): the rest runs in CPU mode"
            echo "$probe" > "$OUT/gpu.txt"
            record gpu FAILED 0 "nvidia-smi lists $gpus GPU(s) but $probe"
        else
            say "no usable GPU ($probe): CPU mode, the GPU-only parts are skipped"
        fi
    fi
fi
if [ "$MODE" = cpu ]; then
    PY=${PYTHON:-$(command -v python || command -v python3)}
fi
# An absolute path: mpiexec looks a bare name up on a PATH of its own (it ran /usr/bin/python3,
# without our package, where PATH said /opt/torch/.venv/bin/python3)
PY=$(command -v "$PY" || echo "$PY")
export PYTHON=$PY ROOT TMP
alexnet_cli() { "$PYTHON" -m alexnet.app.cli "$@"; }   # needs no console script on PATH
export -f alexnet_cli
say "mode $MODE (asked: $REQUESTED), python $PY, logs in $OUT"
printf 'mode\t%s\t0\tasked %s; python %s\n' "$MODE" "$REQUESTED" "$PY" >> "$OUT/summary.txt"

if [ "$MODE" = gpu ]; then
    # The harness's g++ builds go to a temporary cache (a fresh machine's home may not be writable).
    export ALEXNET_KERNEL_CACHE=${ALEXNET_KERNEL_CACHE:-${TMPDIR:-/tmp}/alexnet-kernels}
    export ALEXNET_REQUIRE_CUDA=1   # here a skipped CuPy backend in the kernel tests is a failure
else
    unset ALEXNET_REQUIRE_CUDA      # the CuPy backend of the kernel tests may skip here
fi
# The NumPy reference splits batches over threads with threadpoolctl; without it, one thread.
"$PY" -c "import threadpoolctl" 2> /dev/null || export ALEXNET_THREADS=1

# ---- versions ------------------------------------------------------------------------------------
versions() {
    if command -v nvidia-smi > /dev/null; then nvidia-smi || true; else echo "nvidia-smi: not on PATH"; fi
    "$PYTHON" - <<'EOF'
import sys
import numpy
print("python", sys.version.split()[0], sys.executable)
print("numpy", numpy.__version__)
try:
    import cupy
    rt = cupy.cuda.runtime
    print("cupy", cupy.__version__, "CUDA runtime", rt.runtimeGetVersion(), "driver", rt.driverGetVersion(),
          "NVRTC", cupy.cuda.nvrtc.getVersion())
    name = rt.getDeviceProperties(0)["name"]
    print("device", name.decode() if isinstance(name, bytes) else name)
except Exception as e:
    print("cupy: not usable here:", f"{type(e).__name__}: {e}".splitlines()[0])
try:
    import torch
    print("torch", torch.__version__, "CUDA", torch.version.cuda,
          "cuDNN", torch.backends.cudnn.version() if torch.cuda.is_available() else "-",
          "GPU available", torch.cuda.is_available())
except Exception as e:
    print("torch: not importable:", f"{type(e).__name__}: {e}".splitlines()[0])
EOF
}
export -f versions
part versions 60 bash -c versions

# ---- package -------------------------------------------------------------------------------------
from_checkout() {  # does $PYTHON import alexnet from this checkout? (prints where from)
    "$PYTHON" - "$ROOT" <<'EOF'
import os, sys
import alexnet.app.cli, alexnet.kernels.ops as ops
where = os.path.realpath(ops.__file__)
print("alexnet.kernels.ops from", where)
sys.exit(0 if where.startswith(os.path.realpath(sys.argv[1]) + os.sep) else 1)
EOF
}
link_site() {  # alexnet/<floor> -> ./<floor>, a namespace package as setup.py's package_dir makes it
    mkdir -p "$TMP/site/alexnet"
    for floor in kernels engine layers models app; do ln -s "$ROOT/$floor" "$TMP/site/alexnet/$floor"; done
    export PYTHONPATH="$TMP/site${PYTHONPATH:+:$PYTHONPATH}"
}
t0=$SECONDS
: > "$OUT/package.txt"
if [ "$MODE" = cpu ]; then
    # CPU mode installs nothing (CI has installed the project into the interpreter already); an
    # interpreter without it gets the links, which change nothing outside $TMP.
    how="CPU mode installs nothing; alexnet imported already"
    fallback="CPU mode installs nothing; links in \$TMP/site/alexnet on PYTHONPATH"
    RC=0
else
    limit_for 120
    run_logged package "$LIMIT" "$PY" -m pip install --no-deps --no-build-isolation --no-index -e .
    how="pip install --no-deps --no-build-isolation --no-index -e ."
    fallback="links in \$TMP/site/alexnet on PYTHONPATH (pip install -e . did not work)"
fi
if [ "$RC" -ne 0 ] || ! from_checkout >> "$OUT/package.txt" 2>&1; then
    echo "alexnet does not import from this checkout: links in $TMP/site on PYTHONPATH instead" \
        | tee -a "$OUT/package.txt"
    link_site
    how=$fallback
fi
from_checkout 2>&1 | tee -a "$OUT/package.txt"
RC=${PIPESTATUS[0]}
finish package "$t0" "$how"

# ---- the kernels -----------------------------------------------------------------------------------
# -p no:cacheprovider: no .pytest_cache written into the checkout. In CPU mode the test suite that
# runs this script (tests/test_gpu_check.py) runs these tests itself: here they are only collected,
# which checks that the files and the command still hold.
KERNEL_TESTS="tests/test_kernels.py tests/test_edge_cases.py tests/test_kernel_indexing.py tests/test_kernel_compile.py"
if [ "$MODE" = gpu ]; then
    part kernel_tests 90 "$PY" -m pytest -q -rs -p no:cacheprovider $KERNEL_TESTS
else
    part kernel_tests 60 "$PY" -m pytest -q --collect-only -p no:cacheprovider $KERNEL_TESTS
fi
# The step and the epoch (issue 19's figures) before the longer checks: if the budget runs out, it
# runs out on those. The rest of the kernels' checks run after training, below.
HARNESS_OK=1
if [ "$MODE" = gpu ]; then
    part gpu_step 150 "$PY" bench/gpu_step.py --out "$OUT"
    part gpu_train 120 "$PY" bench/gpu_train.py --out "$OUT"
elif harness=$("$PY" -c "from alexnet.kernels import harness; harness.compiler()" 2>&1); then
    part gpu_step 60 "$PY" bench/gpu_step.py --backend cpu-harness --out "$OUT"
    part gpu_train 60 "$PY" bench/gpu_train.py --backend cpu-harness --workers 1 --out "$OUT"
else
    HARNESS_OK=0
    harness=$(echo "$harness" | tail -n 1)      # HarnessUnavailable: the CPU kernel harness needs g++ ...
    for name in gpu_step gpu_train; do skip "$name" "no GPU and no CPU harness (${harness#*: })"; done
fi

# ---- training: stop and resume -----------------------------------------------------------------------
# Two invocations: the first stops (and checkpoints) after N steps, the second resumes the run and
# stops after N more. Passes when both exit 0, the second says it resumed at step N, and the
# run's checkpoints hold step N and step 2N.
train_check() {  # train_check N FIRST-INVOCATION-ARGS...
    local n=$1 run=$TMP/run
    shift
    set -o pipefail
    alexnet_cli train "$@" --out "$run" --stop-after-steps "$n" --no-progress || return 1
    alexnet_cli train --resume "$run" --stop-after-steps "$n" --no-progress | tee "$TMP/resumed.txt" \
        || return 1
    cp "$run/log.jsonl" "$OUT/train_log.jsonl" 2> /dev/null
    ls "$run/checkpoints"
    local a b
    a=$(printf 'ckpt-%08d.npz' "$n")
    b=$(printf 'ckpt-%08d.npz' $((2 * n)))
    grep -q "resumed from .* step $n\$" "$TMP/resumed.txt" \
        || { echo "train_check: the second run did not resume at step $n"; return 1; }
    [ -f "$run/checkpoints/$a" ] && [ -f "$run/checkpoints/$b" ] \
        || { echo "train_check: expected checkpoints $a and $b in $run/checkpoints"; return 1; }
    echo "train_check: stopped at step $n, resumed, stopped at step $((2 * n)): $a, $b"
}
tiny_folder() {  # tiny_folder DIR: 3 classes x (8 train + 2 val) JPEGs, 80x80, tinted by class
    "$PYTHON" - "$1" <<'EOF'
import os, sys
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for split, n in (("train", 8), ("val", 2)):
    for k, cls in enumerate("abc"):
        os.makedirs(os.path.join(sys.argv[1], split, cls), exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 120, (80, 80, 3)).astype(np.uint8)
            pixels[..., k] += 120
            Image.fromarray(pixels).save(os.path.join(sys.argv[1], split, cls, f"{i}.jpg"), quality=90)
EOF
}
export -f train_check tiny_folder
export ALEXNET_CACHE="$TMP/cache"   # the demo dataset is generated here, not in ~/.cache
# The demo model trained 4 epochs (312 steps at batch 64) in fp32 and in bf16 from the same start:
# the bf16 run's loss, in windows of 50 steps (5 step records), within BAND of the fp32 run's, and
# its final validation top-1 within 5 points. The band is the CPU harness's (tests/test_precision.py:
# 0.25 for 25-step windows of a smaller net, measured 0.03-0.15), kept for this larger, less noisy
# run; not yet measured on a GPU.
precision_check() {
    for p in fp32 bf16; do
        alexnet_cli train --device cuda --precision "$p" --epochs 4 --log-every 10 --no-progress \
            --out "$TMP/precision_$p" || return 1
    done
    "$PYTHON" - "$TMP/precision_fp32/log.jsonl" "$TMP/precision_bf16/log.jsonl" <<'EOF'
import json, sys
import numpy as np
BAND, TOP1 = 0.25, 0.05
runs = [[json.loads(line) for line in open(path)] for path in sys.argv[1:3]]
steps = [np.array([r["loss"] for r in run if r["type"] == "step"]) for run in runs]
n = min(len(s) for s in steps) // 5 * 5
windows = [s[:n].reshape(-1, 5).mean(axis=1) for s in steps]
top1 = [[r["val_top1"] for r in run if r["type"] == "epoch"][-1] for run in runs]
gap = float(np.abs(windows[1] - windows[0]).max())
print("fp32 loss, 50-step windows:", np.round(windows[0], 3).tolist())
print("bf16 loss, 50-step windows:", np.round(windows[1], 3).tolist())
print(f"precision_check: largest window gap {gap:.3f} (band {BAND}), val top-1 fp32 {top1[0]:.3f} bf16 {top1[1]:.3f}")
sys.exit(0 if gap <= BAND and abs(top1[1] - top1[0]) <= TOP1 else 1)
EOF
}
export -f precision_check
if [ "$MODE" = gpu ]; then
    part precision_train 90 bash -c precision_check
    part train 90 bash -c "train_check 15 --device cuda --precision bf16 --epochs 1 --batch-size 64 --log-every 5"
else
    skip precision_train "bf16 needs a GPU (tests/test_precision.py trains a small net in bf16 on the CPU harness)"
    part train 90 bash -c 'tiny_folder "$TMP/data" && train_check 2 --data "$TMP/data" --device cpu \
        --model alexnet-small --epochs 1 --batch-size 4 --workers 1 --init he --input-scale 0.015625 --log-every 1'
fi

# ---- training under mpiexec against one process -----------------------------------------------------
# The same N steps from the same start: `alexnet train` alone, and under `mpiexec -n RANKS`. One
# rank runs the data-parallel code (app/distributed.py) with the gradients summed by NCCL on a GPU
# (by MPI on the CPU): its sum is its own gradient, so the weights must agree to the bit. Two
# ranks on the one GPU of a lent machine share it, so their gradients are staged through host
# memory and summed by MPI, and `--parallel towers` splits the paper's two towers over them: both
# must be the one-process training to float32 round-off (1.5e-3 after 4 steps on the CPU between
# two summation orders, docs/distributed.md; with a sum for a mean the velocities would be 2x off).
# Each run must say how it trained.
mpi_check() {  # mpi_check RANKS N TOL EXPECTED-LINE-REGEX MPI-ONLY-ARGS FIRST-INVOCATION-ARGS...
    local ranks=$1 n=$2 tol=$3 expect=$4 mpi_only=$5 one=$TMP/mpi_one rank=$TMP/mpi_ranks
    shift 5
    rm -rf "$one" "$rank"
    alexnet_cli train "$@" --out "$one" --stop-after-steps "$n" --no-progress > "$one.txt" || return 1
    # shellcheck disable=SC2086 (MPI-ONLY-ARGS are words)
    "$MPIEXEC" -n "$ranks" "$PYTHON" -m alexnet.app.cli train "$@" $mpi_only --out "$rank" --stop-after-steps "$n" \
        --no-progress | tee "$rank.txt" || return 1
    grep -q "$expect" "$rank.txt" || { echo "mpi_check: no line matching '$expect'"; return 1; }
    "$PYTHON" - "$one" "$rank" "$n" "$tol" <<'EOF'
import sys
import numpy as np
from alexnet.app.checkpoint import CheckpointDir, load
(a, meta_a), (b, meta_b) = (load(CheckpointDir(f"{run}/checkpoints").latest()) for run in sys.argv[1:3])
assert meta_a["step"] == meta_b["step"] == int(sys.argv[3]), (meta_a["step"], meta_b["step"])
err = max(float(np.abs(a[k].astype(np.float64) - b[k]).max() / max(np.abs(a[k]).max(), 1e-30))
          for k in a if k.startswith(("model/", "optim/")))
print(f"mpi_check: {len(a)} arrays after step {meta_a['step']}, largest relative difference {err:.3g}"
      f" (tolerance {float(sys.argv[4]):g})")
sys.exit(0 if err <= float(sys.argv[4]) else 1)
EOF
}
export -f mpi_check
# Open MPI's mpiexec refuses to start as root unless told twice (the lent machines run commands
# as root); MPICH's ignores these.
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
MPIEXEC=$(dirname "$PY")/mpiexec
[ -x "$MPIEXEC" ] || MPIEXEC=$(command -v mpiexec || true)
export MPIEXEC
ONE_RANK="data parallel over 1 rank .*gradients summed by"
MPI_PARTS="mpi_train mpi_two_ranks mpi_towers"
if ! mpi=$("$PY" -c "import mpi4py" 2>&1); then
    for name in $MPI_PARTS; do skip $name "mpi4py is not installed (pip install -e '.[mpi]'): $(echo "$mpi" | tail -n 1)"; done
elif [ -z "$MPIEXEC" ]; then
    for name in $MPI_PARTS; do skip $name "no mpiexec next to $PY or on PATH (pip install mpich)"; done
elif [ "$MODE" = gpu ]; then
    GPU_RUN="--device cuda --epochs 1 --batch-size 64 --log-every 5"
    part mpi_train 60 bash -c "mpi_check 1 10 0 '$ONE_RANK NCCL' '' $GPU_RUN"
    part mpi_two_ranks 60 bash -c "mpi_check 2 10 1e-2 'data parallel over 2 ranks .*summed by MPI, staged' '' $GPU_RUN"
    part mpi_towers 60 bash -c "mpi_check 2 10 1e-2 \"the paper's two towers\" '--parallel towers' $GPU_RUN"
else
    part mpi_train 90 bash -c '[ -d "$TMP/data" ] || tiny_folder "$TMP/data"; mpi_check 1 2 0 "$ONE_RANK MPI" "" \
        --data "$TMP/data" --device cpu --model alexnet-small --epochs 1 --batch-size 4 --workers 1 --init he \
        --input-scale 0.015625'
    for name in mpi_two_ranks mpi_towers; do skip $name "two ranks on the CPU: tests/test_distributed.py"; done
fi

# ---- the rest of the kernels' checks --------------------------------------------------------------
if [ "$MODE" = gpu ]; then
    part gpu_kernels 90 "$PY" bench/gpu_kernels.py --backend cupy --out "$OUT"
    part kernels_check 40 bash -c "alexnet_cli kernels --check --backend cupy"
    part gpu_gemm 60 "$PY" bench/gpu_gemm.py --xp cupy --network --out "$OUT"
elif [ "$HARNESS_OK" -eq 1 ]; then
    part gpu_kernels 60 "$PY" bench/gpu_kernels.py --backend cpu-harness --small --out "$OUT"
    part kernels_check 60 bash -c "alexnet_cli kernels --check --backend cpu-harness"
    part gpu_gemm 60 "$PY" bench/gpu_gemm.py --xp numpy --batch 1 --out "$OUT"
else
    for name in gpu_kernels kernels_check gpu_gemm; do skip "$name" "no GPU and no CPU harness (${harness#*: })"; done
fi

# ---- compute-sanitizer ---------------------------------------------------------------------------
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2> /dev/null | head -n 1)
for tool in memcheck racecheck; do
    if [ "$MODE" = cpu ]; then
        skip "$tool" "compute-sanitizer needs a GPU (on the CPU harness: ALEXNET_HARNESS_SANITIZE, docs/kernels.md)"
    elif [ -z "$SANITIZER" ]; then
        skip "$tool" "compute-sanitizer is not on PATH nor in /usr/local/cuda*/bin"
    else
        # --no-pool: each array its own allocation, so an overrun leaves the allocation memcheck knows
        part "$tool" 60 "$SANITIZER" --tool "$tool" --error-exitcode 1 \
            "$PY" bench/gpu_kernels.py --backend cupy --small --no-pool --out "$OUT" \
            --json "$OUT/gpu_kernels_$tool.json"
    fi
done

# ---- summary -------------------------------------------------------------------------------------
echo
echo "gpu_check summary ($MODE mode, ${SECONDS} s; logs and JSON in $OUT):"
awk -F'\t' '$1 != "mode" { printf "  %-14s %-8s %5s s  %s\n", $1, $2, $3, $4 }' "$OUT/summary.txt"
echo "gpu_check: $failed part(s) failed"
exit "$failed"
