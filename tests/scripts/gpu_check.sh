#!/usr/bin/env bash
# GPU checks, run on a machine with a CUDA GPU from the repository root:
#   bash tests/scripts/gpu_check.sh            (logs under $OUT, default /tmp/sing-gpu)
# 1. the tests that need CUDA (actor on CUDA vs CPU, nvJPEG vs libjpeg, bf16 channels_last);
# 2. tests/scripts/gpu_decode_profile.py: img/s of each device-decode step (nvJPEG, resize
#    per image vs grouped by size, normalise), synchronised, and the decode-only ceiling of
#    1, 4 and 8 processes (the most img/s device decode can feed the forward);
# 3. `sing bench-precision --device cuda`: fp32 / tf32 / bf16 against a float64 forward (score
#    errors and speed; the budget that decides the default precision);
# 4. `sing bench` on CUDA for each CONFIGS entry decode:host_decode_share:actors_per_gpu[:threads]
#    (device decode = nvJPEG in the actors, host = PIL in the read tasks; threads = batches per
#    actor at once, --actor-threads): pipeline/bare-forward ratio, speed-up over a naive loop,
#    peak RSS, stream rate; each run also races the bare eager forward against torch.compile
#    (--compile $COMPILE, default auto), at fp32 and bf16, and prints the fixed cost step by step
#    and the floor under it (the same stream with no model work: pipelines.jobs.bench.floor).
#    All configs share one set of shards ($BENCH_DIR);
# 5. `large`: the same for one large paper model (ViT-L/16, random weights: the speed is the
#    architecture's), compute-bound, where the pipeline should reach >= 0.95 of the bare forward.
# Env: IMAGES, BATCH, BUFFER_GB, BENCH_TIMEOUT, CONFIGS, COMPILE, STEPS.
# The default STEPS ("tests precision bench large", one config) fit one 8-minute device call
# (timeouts 40 + 80 + 240 + 100 s, untested on a GPU so far); the fallback subset when less time is left:
#   STEPS=bench IMAGES=2048 BENCH_TIMEOUT=150 bash tests/scripts/gpu_check.sh
# Packages a bare image lacks can sit in .whl/ (wheels, and ray as ray-cp312.tar.xz).
set -uo pipefail
OUT=${OUT:-/tmp/sing-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
if [ -d .whl ] && [ ! -d /tmp/site/ray ]; then  # a warm machine keeps /tmp/site
  mkdir -p /tmp/site
  [ -f .whl/ray-cp312.tar.xz ] && tar xJf .whl/ray-cp312.tar.xz -C /tmp/site
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
fi
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
nvidia-smi -L | tee "$OUT/env.txt"
$PY -c "import torch, torchvision, timm, ray, open_clip; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'ray', ray.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$OUT/env.txt"
STEPS=${STEPS:-tests precision bench large}
[[ " $STEPS " == *" tests "* ]] && timeout 40 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_device_decode.py tests/test_models.py -k "cuda or gpu" 2>&1 | tee "$OUT/pytest_cuda.log"
[[ " $STEPS " == *" profile "* ]] && timeout 180 $PY tests/scripts/gpu_decode_profile.py --batch ${BATCH:-256} --repeats ${REPEATS:-10} --procs 1 4 8 2>&1 | tee "$OUT/decode_profile.log"
[[ " $STEPS " == *" precision "* ]] && timeout 80 $PY -m pipelines.cli -q bench-precision --device cuda --per-photo 64 2>&1 | tee "$OUT/precision_lite0.log"
BENCH_DIR=${BENCH_DIR:-/tmp/sing-bench}
[[ " $STEPS " == *" large "* ]] && timeout 100 $PY -m pipelines.cli -q bench --device cuda --decode device \
    --model timm:vit_large_patch16_224@random --images ${LARGE_IMAGES:-1024} --batch-size 64 --precisions fp32 bf16 \
    --compile off --no-naive --no-floor 2>&1 | tee "$OUT/bench_large_vitl16.log"
[[ " $STEPS " == *" bench "* ]] || exit 0
for cfg in ${CONFIGS:-device:0:2:4}; do
  IFS=: read -r mode share apg threads <<< "$cfg"
  threads=${threads:-1}
  timeout ${BENCH_TIMEOUT:-240} $PY -m pipelines.cli -q bench --device cuda --decode "$mode" --compile ${COMPILE:-auto} \
      --host-decode-share "$share" --actors-per-gpu "$apg" --actor-threads "$threads" --out "$BENCH_DIR" \
      ${BUFFER_GB:+--buffer-gb $BUFFER_GB} \
      --images ${IMAGES:-4096} --batch-size ${BATCH:-256} 2>&1 | tee "$OUT/bench_${mode}_${share}_${apg}_${threads}.log"
done
