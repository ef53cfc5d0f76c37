#!/usr/bin/env bash
# Usage: [OUT=outputs/gpu_check] [GPU_CHECK_BUDGET=470] [GPU_CHECK_STEPS="setup tests suite main main_compiled caption bench"] bash bench/gpu_check.sh [--dry]
#
# Everything GPU-related of issue 14 in one command, from the project root on one H100/H200-class GPU, in under 8
# minutes, with the project on PYTHONPATH only (no `pip install -e`, no console script): the `gpu` tests and the rest
# of the suite with the GPU visible (together), the main job in bf16 eager and with --torch_compile (seconds per
# epoch), the caption command over 2,000 synthetic images (images/s), and bench_vs_ved.py's GPU rows (vit-gpt2).
# Each step runs under `timeout` (its cap, or what is left of GPU_CHECK_BUDGET seconds) with its log in $OUT; a step
# that fails or times out does not stop the others. $OUT/gpu_check.json holds every figure and each step's exit
# status (124: timed out). Wheels in .whl/ (../shared/gpu/wheels.sh, plus pytest-xdist and execnet) are installed
# first when present. --dry: the same plumbing at toy sizes on a CPU (a tiny main job, 64 images, --quick bench, one
# test file instead of the suite), to check the script where there is no GPU. The bench runs last, in what is left of
# the budget, and saves its rows part by part; if it ran out, a second call measures it alone:
#   GPU_CHECK_STEPS="setup bench" GPU_CHECK_BUDGET=560 [GPU_CHECK_COMPILE_VED=1] bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
[[ ${1:-} == --dry ]] && DRY=1
OUT=${OUT:-$ROOT/outputs/gpu_check}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")  # model folders, checkpoints and images: not sent back
PY=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
BUDGET=${GPU_CHECK_BUDGET:-$((DRY ? 1800 : 470))}
STEPS=" ${GPU_CHECK_STEPS:-setup tests suite main main_compiled caption bench} "
START=$SECONDS
: >"$OUT/steps.tsv"
: >"$OUT/gpu_check.log"

say() { echo "[gpu_check +$((SECONDS - START))s] $*" | tee -a "$OUT/gpu_check.log"; }
wanted() { [[ $STEPS == *" ${1/render/caption} "* ]]; } # the images are rendered for the caption step

# run_step NAME CAP COMMAND...: COMMAND under `timeout` for CAP seconds or what is left of the budget, output in
# $OUT/NAME.log, "NAME<TAB>exit<TAB>seconds<TAB>limit" in $OUT/steps.tsv.
run_step() {
  local name=$1 cap=$2
  shift 2
  if ! wanted "$name"; then
    printf '%s\tnot asked\t0\t0\n' "$name" >>"$OUT/steps.tsv"
    return 0
  fi
  local left=$((BUDGET - (SECONDS - START)))
  cap=$((DRY ? 4 * cap : cap)) # a CPU compiles and trains the toy sizes slower than a GPU the real ones
  local limit=$((left < cap ? left : cap))
  if ((limit < 20)); then
    say "$name: skipped, ${left}s of the budget left"
    printf '%s\tno time left\t0\t%s\n' "$name" "$limit" >>"$OUT/steps.tsv"
    return 0
  fi
  say "$name (at most ${limit}s): $*"
  local began=$SECONDS status
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  status=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - began))" "$limit" >>"$OUT/steps.tsv"
  say "$name: exit $status after $((SECONDS - began))s (log $OUT/$name.log)"
}

# --- setup: wheels, versions -----------------------------------------------------------------------------------
setup() {
  if [[ -d .whl && $DRY == 0 ]]; then
    # The wheel files themselves, not the names: `pip install transformers` keeps a preinstalled other version.
    local wheels
    wheels=$(ls .whl/{transformers,huggingface_hub,accelerate,datasets,evaluate}-*.whl 2>/dev/null)
    # shellcheck disable=SC2086 # one wheel path per word
    "$PY" -m pip install -q --no-index --find-links .whl $wheels
    if ! "$PY" -c "import xdist" 2>/dev/null && compgen -G ".whl/pytest_xdist-*.whl" >/dev/null; then
      "$PY" -m pip install -q --no-index --find-links .whl pytest-xdist
    fi
  fi
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" - <<'PY' | tee "$OUT/environment.json"
import importlib.metadata as metadata, json, os, platform, torch
versions = {}
for name in ("torch", "transformers", "accelerate", "datasets", "evaluate", "pytest", "pytest-xdist", "tokenizers"):
    try:
        versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        versions[name] = None
print(json.dumps({
    "python": platform.python_version(), "cpus": os.cpu_count(), **versions,
    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False),
}))
PY
}
export -f setup
export DRY PY OUT
run_step setup 45 bash -c setup

# --- correctness, side by side: gpu tests, the rest of the suite, the caption step's images ------------------------
if "$PY" -c "import xdist" 2>/dev/null; then
  # 12 workers of one thread each (OMP_NUM_THREADS=1 below) leave the gpu tests four of the 16 cores.
  PARALLEL=(-n 12)
else
  PARALLEL=()
  say "pytest-xdist is missing: the suite runs in one process and will not finish within its cap"
fi
IMAGES=$WORK/images
if ((DRY)); then
  SUITE=(tests/test_demo.py)
  IMAGE_COUNT=64
else
  SUITE=()
  IMAGE_COUNT=2000
fi
TESTS_CAP=${GPU_CHECK_TESTS_S:-150}
SUITE_CAP=${GPU_CHECK_SUITE_S:-150}
# Side by side on the GPU machine; one after the other in a dry run (a CPU machine may be shared).
alongside() { if ((DRY)); then "$@"; else "$@" & fi; }
alongside run_step tests "$TESTS_CAP" "$PY" -m pytest -m gpu -q -p no:cacheprovider --durations=15 tests/test_gpu.py
alongside run_step suite "$SUITE_CAP" env OMP_NUM_THREADS=1 "$PY" -m pytest -m "not slow and not gpu" -v \
  --tb=short -p no:cacheprovider "${PARALLEL[@]}" "${SUITE[@]}"
alongside run_step render 90 "$PY" bench/gpu_check.py render "$IMAGES" --count "$IMAGE_COUNT" --size 256
wait

# --- the main job: bf16 eager, then with --torch_compile ------------------------------------------------------------
if ((DRY)); then
  MAIN=(--preset tiny --synthetic_sizes 96,16,16 --num_train_epochs 2 --num_beams 2 --no_meteor)
else
  # Epoch 0 holds the warm-up (and compilation); seconds per epoch is the median of the later ones.
  MAIN=(--num_train_epochs "${GPU_CHECK_MAIN_EPOCHS:-3}")
fi
run_step main 60 "$PY" train.py --config configs/synthetic-small.yaml --mixed_precision bf16 "${MAIN[@]}" \
  --output_dir "$WORK/main"
if "$PY" train.py --help 2>/dev/null | grep -q -- "--torch_compile"; then
  run_step main_compiled 90 "$PY" train.py --config configs/synthetic-small.yaml --mixed_precision bf16 \
    --torch_compile "${MAIN[@]}" --output_dir "$WORK/main_compiled"
else
  say "main_compiled: train.py has no --torch_compile yet"
  printf 'main_compiled\tno --torch_compile\t0\t0\n' >>"$OUT/steps.tsv"
fi
for run in main main_compiled; do
  [[ -f $WORK/$run/metrics.json ]] && mkdir -p "$OUT/$run" && cp "$WORK/$run/metrics.json" "$OUT/$run/"
done

# --- the caption command over the rendered images --------------------------------------------------------------------
MODEL=$WORK/main
if [[ ! -f $MODEL/model.safetensors ]]; then
  MODEL=$WORK/stand_in
  "$PY" bench/gpu_check.py model "$MODEL" >>"$OUT/gpu_check.log" 2>&1
  echo "random-init small captioner (the main job saved no model)" >"$OUT/caption_model.txt"
else
  echo "the main job's model (small preset, bf16 eager run)" >"$OUT/caption_model.txt"
fi
if ((DRY)); then
  DEVICE=(--device cpu --dtype float32)
else
  DEVICE=(--device cuda --dtype bfloat16)
fi
run_step caption 45 "$PY" -m captioning.cli caption "$IMAGES" --model "$MODEL" "${DEVICE[@]}" --batch_size 64 \
  --output "$OUT/captions.jsonl"

# --- bench_vs_ved.py's GPU rows: eager and compiled, training (with MFU) and generation --------------------------------
if ((DRY)); then
  BENCH=(--quick --device cpu --compiled)
else
  BENCH=(--preset vit-gpt2 --batch_sizes 64 --generate_batch_size 32 --repeats 3 --train_steps 5 --latency_images 2
    --train_images 320 --test_images 32 --compiled)
fi
[[ ${GPU_CHECK_COMPILE_VED:-0} == 1 ]] && BENCH+=(--compile_ved)
run_step bench 400 "$PY" bench/bench_vs_ved.py --parts training generation "${BENCH[@]}" --output "$OUT/bench.json"

# --- one JSON --------------------------------------------------------------------------------------------------------
"$PY" bench/gpu_check.py summary "$OUT" >"$OUT/summary.log" 2>&1 || say "summary failed: see $OUT/summary.log"
say "done in $((SECONDS - START))s; figures and exit statuses: $OUT/gpu_check.json"
rm -rf "$WORK"
