#!/bin/sh
# The GPU part of the benchmarks as one device call: every command of the CLI on the GPU (scripts/device_smoke.py),
# UniCL steps of a ViT-B-16 with images/s, step time and MFU, every ratio benchmark at ViT-B-16 size, extraction
# with DataLoader workers, and the class-count scaling curves. Each step has its own time limit (520 s together;
# on an H200 the steps took 44, 28, 63, 16, 36 and about 120 s before the 8-worker CoOp step was added), so one that hangs or fails leaves the others their
# time. Output: $OUT/gpu.log and the scaling tables ($OUT, or bench/results).
#
# The device image has PyTorch, timm and safetensors but not open_clip_torch; carry it as wheels. Once, here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.2.13
# then: run(command="sh bench/gpu.sh", carry=[".whl"], timeout_s=600)
# PEAK_TFLOPS: the card's dense bf16 peak for MFU (H100 SXM and H200: 989).
out=${OUT:-bench/results}
log="$out/gpu.log"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
device=${DEVICE:-cuda}  # DEVICE=cpu checks this script without a GPU
export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 CLIPADAPT_CACHE=/tmp/clipadapt-cache
step() {  # step SECONDS TITLE COMMAND...: run with a time limit, its output appended to the log
    limit=$1 title=$2
    shift 2
    echo "## $title ($(date -u +%H:%M:%S))" >> "$log"
    # timeout signals the step's whole process group (run.py's and scaling.py's children too); KILL 10 s later.
    timeout -k 10 "$limit" "$@" >> "$log" 2>&1
    echo "## exit code $? after $title" >> "$log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$log" 2>&1
python3 -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__,
torch.cuda.get_device_name(), torch.get_num_threads(), 'threads')" >> "$log" 2>&1
step 70 "every command on the GPU" python3 scripts/device_smoke.py --device "$device"
step 60 "UniCL steps, ViT-B-16, batch 256" python3 bench/unicl_step.py --model ViT-B-16 --batch 256 --steps 10 \
    --device "$device" --peak-tflops "${PEAK_TFLOPS:-989}"
step 100 "ratio benchmarks, ViT-B-16" python3 bench/run.py --device "$device" --model ViT-B-16 --verbose \
    --only text_truncation,coop_cached,cocoop_batched,ship_synthesis
step 60 "CoOp cached vs the official loop decoding in 8 workers, ViT-B-16" python3 bench/coop_cached.py \
    --classes 8 --steps 64 --workers 8 --device "$device"
step 30 "CoCoOp, ViT-B-16, 4 classes" python3 bench/cocoop_batched.py --model ViT-B-16 --classes 4 --device "$device"
step 60 "extraction with 8 workers, ViT-B-16" python3 bench/extract_workers.py --model ViT-B-16 --images 2048 \
    --workers 8 --device "$device"
step 140 "scaling, ViT-B-16" python3 bench/scaling.py --model ViT-B-16 --device "$device" --classes 1000,21000 \
    --workloads coop_step,coop_step_unchunked,zeroshot,ship_synthesis --out-dir "$out"
exit 0
