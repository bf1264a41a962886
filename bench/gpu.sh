#!/bin/sh
# The GPU part of the benchmarks as one device call (written without a GPU: not yet run on one): every ratio benchmark with
# --device cuda, CoCoOp at ViT-B-16 size, UniCL steps of a ViT-B-16 with MFU, and the scaling curves.
# Output: $OUT (the device tool brings it back) or bench/results.
#
# The device image has PyTorch, timm and safetensors but not open_clip_torch; carry it as wheels. Once, here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
# then: run(command="sh bench/gpu.sh", carry=[".whl"], timeout_s=540)
# PEAK_TFLOPS: the card's dense bf16 peak for MFU (H100 SXM 989, H200 989).
set -x
out=${OUT:-bench/results}
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu-device.txt"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" >> "$out/gpu-device.txt"
python3 bench/run.py --device cuda > "$out/gpu-run.txt" 2>&1
python3 bench/cocoop_batched.py --model ViT-B-16 --device cuda >> "$out/gpu-run.txt" 2>&1
python3 bench/unicl_step.py --model ViT-B-16 --batch 256 --steps 10 --device cuda \
    --peak-tflops "${PEAK_TFLOPS:-989}" > "$out/gpu-unicl.txt" 2>&1
python3 bench/scaling.py --device cuda > "$out/gpu-scaling.txt" 2>&1
cp bench/results/scaling-NVIDIA*.md "$out"/ 2>/dev/null
exit 0
