#!/usr/bin/env bash
# The checks that need a GPU, as one short run on a lent GPU machine (the device tool; never CI).
#
# That machine has torch, numpy, Pillow, safetensors and pytest but no network: what else the
# pipeline imports travels as wheels in .whl/ (fastavro, cramjam, structlog, tenacity, redis,
# hiredis; cp312 manylinux, `pip download` as the device README says), with the model to serve as
# .whl/demo.safetensors. Run from the repository root, `carry: [".whl"]`; results land in $OUT.
#   1. the CUDA tests (the `gpu` marker), 2. bench/inference.py (engine alone, batch sizes),
#   3. bench/pipeline.py (the pipeline against the engine, 1 to 8 processes sharing the GPU).
set -uo pipefail
OUT=${OUT:-/tmp/agegate-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
status=0
timeout 120 python3 -m pytest -p no:cacheprovider --noconftest -q -m gpu \
  tests/unit/test_model_engine.py tests/unit/test_model_uncertainty.py 2>&1 | tee "$OUT/cuda-tests.txt" || status=1
timeout 150 python3 bench/inference.py --quick 2>&1 | tee "$OUT/inference.txt" || status=1
checkpoint=.whl/demo.safetensors
[ -f "$checkpoint" ] || checkpoint=""
timeout 240 python3 bench/pipeline.py ${checkpoint:+--checkpoint "$checkpoint"} --processes "${PROCESSES:-2,4,8}" 2>&1 \
  | tee "$OUT/pipeline.txt" || status=1
cp bench/results/*-cuda.json "$OUT/" 2>/dev/null
exit $status
