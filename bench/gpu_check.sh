#!/usr/bin/env bash
# The one prepared device check (GPU request path issue): the CUDA-graph TTFT bench, the lean-runtime
# TTFT bench, then the GPU tests (and the transformers-path TTFT bench with TTFT_S set), on the 1.4B
# Qwen3.5-style config in bf16, in at most 8 minutes on a fresh machine without network. Run from the
# repository root through the device tool, carrying the wheels and Triton's cache:
#     run(command="bash bench/gpu_check.sh", carry=[".whl", ".triton-tgz"], timeout_s=420)
# The wheels (git-ignored, 23 MB: room is left in the 64 MiB a call carries for the Triton cache;
# no FAISS, which nothing here imports; the device image lacks these versions), built here with:
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       transformers==5.23.0 flash-linear-attention==0.6.0 fla-core==0.6.0 diskcache==5.6.3 \
#       huggingface-hub==2.4.0 tokenizers==0.23.3 safetensors==0.8.0 httpx2==2.16.2 httpcore2==2.16.2 hf-xet==1.8.0 \
#       click truststore anyio       (hub 2.4.0 imports httpx2; the image has neither it nor click >= 8.4.2)
# Results land in $OUT: run.log, reports.tgz (lean_ttft_gpu.{md,json}, cuda_graph_ttft.json and its
# profile, gpu_tests.txt; ttft_gpu.json when TTFT_S is set), and Triton's refreshed cache in parts,
# triton-cache.txz.a, ... (xz; .tgz where the machine has no xz). Copy the reports into bench/results
# and commit them. LEAN_S, PROBE_S, TESTS_S, TTFT_S: caps (s); a cap of 0 skips its step. PROBE_ARGS
# replaces the bucketed-graph bench's segment and compile arguments (default "--segments 8 32 --compile").
# A carried Triton cache (.triton-tgz: the last call's triton-cache.t?z.*) skips compiling and
# autotuning (fla caches autotuning results there too).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT" .triton-cache
# Triton's cache travels compressed (146 MB uncompressed, over the 64 MiB a call carries): the parts
# the last call returned, copied into .triton-tgz/ and carried.
if ls .triton-tgz/triton-cache.tgz.* >/dev/null 2>&1; then cat .triton-tgz/triton-cache.tgz.* | tar xzf - -C .triton-cache; fi
if ls .triton-tgz/triton-cache.txz.* >/dev/null 2>&1; then  # xz (a third of gzip's size), read by Python's lzma
  cat .triton-tgz/triton-cache.txz.* | python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)" \
    | tar xf - -C .triton-cache
fi
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
# Inductor's caches (compiled graphs, its Triton kernels, autotuning) travel inside Triton's.
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" HF_HUB_OFFLINE=1 TRITON_CACHE_DIR="$PWD/.triton-cache" \
  TORCHINDUCTOR_CACHE_DIR="$PWD/.triton-cache/inductor"
export PYTHONUNBUFFERED=1
LOG="$OUT/run.log"  # every step's output in one file: a returned folder holds at most 8 files
capped() {  # capped SECONDS COMMAND...: the command under its cap; a cap of 0 skips it
  if [ "$1" = 0 ]; then return 0; fi
  timeout "$@"
}
nvidia-smi --query-gpu=name,memory.total --format=csv >> "$LOG"
python3 -c "import torch, triton, transformers, fla; print(torch.__version__, triton.__version__, transformers.__version__, fla.__version__)" >> "$LOG" 2>&1
# The bucketed-graph bench first (its kernels warm Triton's cache for what follows), with its kernel
# profile, then the same compiled before capture (--compile: rows rewritten as each segment count's
# compiled figures come, so a cap keeps what finished); its .md is rebuilt from its JSON with
# --rewrite-report.
capped ${PROBE_S:-220} python3 bench/cuda_graph_ttft.py ${PROBE_ARGS:---segments 8 32 --compile} --warmup 1 --profile \
  --out "$OUT" 2>&1 \
  | grep -v "falling back" >> "$LOG"
rm -f "$OUT/cuda_graph_ttft.md"
# The lean-runtime bench (the issue's targets), 8 and 32 segments before 16; its report is rewritten
# after every segment count, so a run cut short keeps what it measured.
capped ${LEAN_S:-100} python3 bench/lean_ttft.py --device cuda --dtype bfloat16 --hidden 2048 --layers 24 --vocab 32768 \
  --segments 8 32 16 --requests 3 --threads 16 --out "$OUT" --name lean_ttft_gpu 2>&1 | grep -v "falling back" >> "$LOG"
# -v: every test's outcome as it ends, so a run cut by its cap still names what failed. The lean
# runtime's tests first: the transformers-path ones compile many more kernels.
LEAN_TESTS="lean or decode or mamba2_scan or continuation or bucket or compiled"
capped ${TESTS_S:-80} bash -c "python3 -m pytest -v --timeout 60 --tb=short -rfE -k '$LEAN_TESTS' tests/test_gpu.py; \
  python3 -m pytest -v --timeout 60 --tb=short -rfE -k 'not ($LEAN_TESTS)' tests/test_gpu.py" > "$OUT/gpu_tests.txt" 2>&1
if [ -n "${TTFT_S:-}" ]; then
  capped "$TTFT_S" python3 bench/ttft.py --device cuda --dtype bfloat16 --models qwen3_5-style --hidden 2048 --layers 24 \
    --vocab 32768 --segments 8 16 32 --pool 32 --requests 3 --warmup 2 --throughput-requests 1 --out /tmp/ttft_gpu \
    --name ttft_gpu >> "$LOG" 2>&1 && cp /tmp/ttft_gpu/ttft_gpu.json "$OUT/"
fi
tail -30 "$LOG"; tail -15 "$OUT/gpu_tests.txt"
# At most 8 files come back: the reports travel as one archive beside run.log and the cache's parts.
(cd "$OUT" && tar czf /tmp/reports.tgz --exclude run.log . && find . -mindepth 1 ! -name run.log -delete \
  && mv /tmp/reports.tgz .)
# Triton's cache in parts under the 16 MB a returned file may be; for the next call:
#     rm -rf .triton-tgz && mkdir .triton-tgz && cp <files_at>/triton-cache.t?z.* .triton-tgz/
if command -v xz >/dev/null; then tar cf - -C .triton-cache . | xz -T0 -6 | split -b 15m -a 1 - "$OUT/triton-cache.txz."
else tar czf - -C .triton-cache . | split -b 15m -a 1 - "$OUT/triton-cache.tgz."; fi
