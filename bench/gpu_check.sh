#!/usr/bin/env bash
# The one prepared device check (GPU request path issue): the GPU tests, then the lean-runtime TTFT
# bench and the transformers-path TTFT bench on the 1.4B Qwen3.5-style config in bf16, in at most
# 8 minutes on a fresh machine without network. Run from the repository root through the device
# tool, carrying the wheels and Triton's autotuning cache:
#     run(command="bash bench/gpu_check.sh", carry=[".whl", ".triton-cache"], timeout_s=540)
# The wheels (git-ignored, 37 MB; the device image lacks these versions), built here with:
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       transformers==5.23.0 flash-linear-attention==0.6.0 fla-core==0.6.0 diskcache==5.6.3 faiss-cpu==1.15.1 \
#       huggingface-hub==2.4.0 tokenizers==0.23.3 safetensors==0.8.0
# Results land in $OUT (lean_ttft_gpu.{md,json}, ttft_gpu.{md,json,png}, gpu_tests.txt and the
# refreshed triton-cache.tgz); copy the reports into bench/results and commit them.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT" .triton-cache
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" HF_HUB_OFFLINE=1 TRITON_CACHE_DIR="$PWD/.triton-cache"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/device.txt"
timeout 180 python3 -m pytest -q tests/test_gpu.py 2>&1 | tail -40 | tee "$OUT/gpu_tests.txt"
timeout 150 python3 bench/lean_ttft.py --device cuda --dtype bfloat16 --hidden 2048 --layers 24 --vocab 32768 \
  --segments 8 16 32 --requests 3 --threads 16 --out "$OUT" --name lean_ttft_gpu
timeout 120 python3 bench/ttft.py --device cuda --dtype bfloat16 --models qwen3_5-style --hidden 2048 --layers 24 \
  --vocab 32768 --segments 8 16 32 --pool 24 --requests 3 --warmup 2 --throughput-requests 1 --out "$OUT" --name ttft_gpu
tar czf "$OUT/triton-cache.tgz" -C .triton-cache .
