#!/bin/bash
# The spiral main job under each ode_jax adjoint (default config: 10000 steps), one after another.
set -e
cd "$(dirname "$0")/../../.."
for adjoint in continuous discrete reversible; do
  extra=""
  [ "$adjoint" = reversible ] && extra="--reversible"
  /usr/bin/time -f "$adjoint: %e s wall" python -m experiments.spiral \
    --out results/adjoint_study/spiral_$adjoint --adjoint $adjoint $extra --fresh --no-progress \
    > results/adjoint_study/logs/spiral_$adjoint.log 2>&1
  tail -1 results/adjoint_study/logs/spiral_$adjoint.log
done
