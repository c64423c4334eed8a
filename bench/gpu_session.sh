#!/usr/bin/env bash
# One device call for issues 4 and 5 (docs/gpu.md), everything under one deadline:
#   0. measured profiles of the configurations under configs/ (bench/profile_configs.py;
#      phase "configs", in the work folder's configs/; CONFIGS names them, default all);
#   1. measured profiles of MODELS on the GPU (bench/compare.py profile);
#   2. the solves, on the device machine's CPUs (PuLP and HiGHS carried as wheels in .whl),
#      while the GPU tests (tests/test_gpu.py) run;
#   3. our plans against eager and per-block checkpointing (run_a);
#   4. where the GPU time of eager's step and of ours goes, kernel by kernel, for the models
#      in KERNEL_MODELS (bench/kernel_breakdown.py; phase "kernels");
#   5. the torch.compile baselines (run_c), for as long as the deadline leaves;
#   phase "grad" (not in the default PHASES, runs after run_a): bench/grad_check.py on GRAD_MODELS,
#   deterministic, batch 32, every variant set, into the work folder's grad/;
#   phase "wscap" (not in the default PHASES, runs last): a measured profile of WSCAP_MODELS
#   with cuDNN's workspaces capped at WSCAP_MIB (CUDNN_CONV_WSCAP_DBG), into prof_wscap/.
# Every phase writes as it goes and the work folder is packed after each, so a deadline
# or a kill keeps what finished. Output, all in $OUT: gpu.txt (device, versions, date),
# log.txt, solve.txt, test_gpu.txt and work.tgz (profiles, plans, run_a, run_c).
#
#   OUT=/tmp/out MODELS="resnet50 gpt" DEADLINE=585 bash bench/gpu_session.sh
# PHASES (default "profile solve run_a run_c") picks phases; a later call on the same warm
# machine can go on from the work folder (.gpu/work), e.g. PHASES=run_c.
set -u
OUT=${OUT:?set OUT to the folder that comes back}
MODELS=${MODELS:-"resnet50 gpt"}
COMPILE_MODELS=${COMPILE_MODELS:-$MODELS}
DEADLINE=${DEADLINE:-585}      # seconds from the start for the whole script
TIME_LIMIT=${TIME_LIMIT:-60}   # seconds per solve
PHASES=${PHASES:-"profile solve run_a kernels run_c"}
CONFIGS=${CONFIGS:-}           # config names for the "configs" phase (empty: every config)
KERNEL_MODELS=${KERNEL_MODELS:-resnet50}
GRAD_MODELS=${GRAD_MODELS:-"googlenet resnet50"}
WSCAP_MODELS=${WSCAP_MODELS:-vgg16}
WSCAP_MIB=${WSCAP_MIB:-1024}
STEPS=${STEPS:-"--warmup 2 --steps 8"}
EXTRA=${EXTRA:-}               # e.g. "--small --device cpu" for a dry run here
W=.gpu/work
mkdir -p "$W" "$OUT"
START=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
has() { [[ " $PHASES " == *" $1 "* ]]; }
pack() { tar czf "$OUT/work.tgz" -C "$W" . 2>/dev/null; }
export PYTHONUNBUFFERED=1
# Expandable segments make the allocator split every block it hands out, so allocated bytes
# are the requests rounded to 512, as the planner counts them (bench/memory_model.md).
# ALLOC_CONF= (empty) measures with torch's default allocator instead.
export PYTORCH_CUDA_ALLOC_CONF=${ALLOC_CONF-expandable_segments:True}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
  nproc; date -u; echo "PYTORCH_CUDA_ALLOC_CONF=$PYTORCH_CUDA_ALLOC_CONF"; } >> "$OUT/gpu.txt" 2>&1
if has configs; then
  echo "== configs ($(left) s left)" | tee -a "$OUT/log.txt"
  timeout $(( $(left) - 360 )) python3 bench/profile_configs.py ${CONFIGS:+--models $CONFIGS} \
    ${EXTRA:+--estimate} --out "$W/configs" 2>&1 | grep -v "^WARNING\|profiler\." | tee -a "$OUT/log.txt"
  pack
fi
if has profile; then
  echo "== profile ($(left) s left)" | tee -a "$OUT/log.txt"
  timeout $(( $(left) - 330 )) python3 bench/compare.py profile --models $MODELS $EXTRA \
    --out "$W/prof" 2>&1 | tee -a "$OUT/log.txt"
  pack
fi
if has solve; then
  echo "== solve + GPU tests ($(left) s left)" | tee -a "$OUT/log.txt"
  timeout $(( TIME_LIMIT * 2 + 90 )) python3 bench/compare.py solve --profiles "$W/prof" \
    --out "$W/plans" --time-limit "$TIME_LIMIT" --jobs "${JOBS:-9}" --margin 0.01 \
    >> "$OUT/solve.txt" 2>&1 &
  solver=$!
  timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py \
    >> "$OUT/test_gpu.txt" 2>&1
  wait $solver
  echo "solve exit $?" >> "$OUT/solve.txt"
  pack
fi
if has run_a; then
  echo "== run_a ($(left) s left)" | tee -a "$OUT/log.txt"
  timeout $(( $(left) - 20 )) python3 bench/compare.py run --plans "$W/plans" --models $MODELS $EXTRA \
    --methods eager checkpoint ours $STEPS --out "$W/run_a" 2>&1 | tee -a "$OUT/log.txt"
  pack
fi
if has grad; then
  echo "== grad ($(left) s left)" | tee -a "$OUT/log.txt"
  mkdir -p "$W/grad"
  timeout $(( $(left) - 10 )) python3 bench/grad_check.py --models $GRAD_MODELS --batch 32 \
    --deterministic --fractions 1/2 1/3 --variants all exact none --time-limit 8 $EXTRA \
    --out "$W/grad/grad_check.json" 2>&1 | grep "bench.grad_check" | tee -a "$OUT/log.txt"
  pack
fi
if has kernels && [[ -z "$EXTRA" ]]; then
  echo "== kernels ($(left) s left)" | tee -a "$OUT/log.txt"
  for m in $KERNEL_MODELS; do
    timeout $(( $(left) - 20 )) python3 bench/kernel_breakdown.py --model "$m" \
      --plans "$W/plans" --labels unoptimised 1/3 --out "$W/kernels" 2>&1 | tail -n 60 \
      | tee -a "$OUT/log.txt"
  done
  pack
fi
if has run_c; then
  echo "== run_c ($(left) s left)" | tee -a "$OUT/log.txt"
  timeout $(( $(left) - 10 )) python3 bench/compare.py run --models $COMPILE_MODELS $EXTRA \
    --methods eager compile $STEPS --out "$W/run_c" 2>&1 | tee -a "$OUT/log.txt"
  pack
fi
if has wscap; then
  echo "== wscap ($(left) s left)" | tee -a "$OUT/log.txt"
  CUDNN_CONV_WSCAP_DBG=$WSCAP_MIB timeout $(( $(left) - 5 )) python3 bench/profile_configs.py \
    --models $WSCAP_MODELS ${EXTRA:+--estimate} --out "$W/prof_wscap" 2>&1 \
    | grep -v "^WARNING\|profiler\." | tee -a "$OUT/log.txt"
  pack
fi
echo "== done ($(left) s left)" | tee -a "$OUT/log.txt"
