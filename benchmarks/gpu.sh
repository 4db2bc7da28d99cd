#!/usr/bin/env bash
# The benchmark on a GPU machine, one case per process (a failure costs one case, not the run).
#
#   bash benchmarks/gpu.sh OUT_DIR [SECONDS_PER_CASE]
#
# JAX and torch both run on the GPU (benchmarks.run --torch-device auto), in float32 (TF32 off
# in both), ConcatConv2d impl="auto" (the native convolution on a GPU). Compile once per method
# and skip the NFE-counting compiles to fit a few minutes of device time; the NFE and overhead
# columns are then empty (the CPU report has them; the solvers take the same steps).
set -u -o pipefail
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [SECONDS_PER_CASE]}
limit=${2:-100}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import jax, equinox, diffrax, optax, torch, torchdiffeq; print('jax', jax.__version__, jax.devices(), 'equinox', equinox.__version__, 'diffrax', diffrax.__version__, 'torch', torch.__version__, torch.cuda.is_available())"
} 2>&1 | tee "$out/env.txt"
for case in mlp mlp_eqx odenet odenet_plain spiral train; do
  echo "== $case ($(date +%T))"
  timeout "$limit" python3 -m benchmarks.run --cases "$case" --budget 8 --repeats 7 \
    --compiles 1 --no-nfe --out "$out/gpu_$case.md" 2>&1 | tail -n 40
done 2>&1 | tee "$out/log.txt"
