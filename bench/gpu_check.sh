#!/usr/bin/env bash
# One short GPU check (~3 min): CUDA throughput of every zoo model and the CUDA tests.
#
#   bash bench/gpu_check.sh        # from the repository root, on a machine with an NVIDIA GPU
#
# Made for a bare GPU box without network that has python3 with torch, torchvision, numpy and
# pytest but not the node's other dependencies: wheels found in .whl/ are installed into
# /tmp/site first (pydicom is the only one bench/infer.py and the tests below need; fetch it
# with `pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl
# pydicom==3.0.2`). Logs go to $OUT (default /tmp/gpu-check): env.txt, gpu-infer.txt,
# pytest.txt. Figures and how to read them: docs/performance.md.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

{
    date -u
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    echo "CPU cores: $(nproc)"
    "$PY" -c 'import sys, torch, torchvision, numpy, pydicom
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version(), "| torchvision", torchvision.__version__,
      "| numpy", numpy.__version__, "| pydicom", pydicom.__version__)
print(torch.cuda.get_device_name(0), "| bf16:", torch.cuda.is_bf16_supported())'
} 2>&1 | tee "$OUT/env.txt"

status=0
step() { # log, seconds, command...: run with a time limit into $OUT/log, note a failure, go on
    local log=$1 limit=$2 rc
    shift 2
    echo "== $*" | tee "$OUT/$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$log"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "== FAILED (exit $rc): $*" | tee -a "$OUT/$log"
        status=1
    fi
}

# all six models: fp32 and bf16 bare forward, the worker's path (score_series: decode and
# preprocessing in the producer thread; and with 8 decoder processes), read+predict; batch
# 64, a 256-slice series
step gpu-infer.txt 300 "$PY" bench/infer.py --device cuda --batch 64 --slices 256 --seconds 1 \
    --repeats 2 --decode-processes 8

# CUDA tests (and their CPU neighbours); no conftest: it needs the node's database stack
step pytest.txt 120 "$PY" -m pytest -q -rs --noconftest -p no:cacheprovider \
    tests/unit/test_precision.py tests/unit/test_gradcam.py tests/unit/test_stream.py \
    -k "not config_key"

exit $status
