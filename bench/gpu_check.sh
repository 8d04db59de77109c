#!/usr/bin/env bash
# The device check of issue 13, prepared to run in under 5 minutes on one GPU:
#   bash bench/gpu_check.sh            (results in bench/results/*_gpu.json, or $OUT)
# Needs a Python with jax for the GPU (e.g. jax[cuda12]) and this project
# installed (pip install -e .). Measures on the GPU:
# - ViT-B/16 and ConvNeXt-T forward / forward+backward at 448 px, batch 16, and
#   the depthwise 7x7 implementations at ConvNeXt-T's stage shapes ('auto'
#   picks XLA's grouped convolution off the CPU: this shows whether it should);
# - the whole train step of the default config (depthwise auto vs shifted,
#   alignment conditioning factored vs resize) and
#   of the paper config, float32 and bfloat16: images/s, compile seconds,
#   memory, MFU (train_bench.py's PEAK_FLOPS, or --peak_tflops).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
out="${OUT:-bench/results}"
python bench/backbones_bench.py --vit=b/16 --convnext=tiny --image_size=448 --batch=16 \
    --repeats=10 --depthwise=auto,shifted,xla --load= --output="$out/backbones_bench_gpu.json"
python bench/train_bench.py --configs=default --depthwise=auto,shifted --condition=factored,resize \
    --dtypes=float32,bfloat16 --steps=20 --rounds=3 --output="$out/train_bench_gpu_default.json"
python bench/train_bench.py --configs=paper --depthwise=auto --condition=factored --dtypes=float32,bfloat16 \
    --remat=false,true --steps=5 --rounds=2 --output="$out/train_bench_gpu_paper.json"
