#!/bin/sh
# Waits for the MLE grid, then a second seed of the density grid (Figure 4 models).
while pgrep -f "runs/cnf/mle.sh" > /dev/null; do sleep 10; done
python -m experiments.cnf grid density --root runs/cnf --steps 2000 --no-progress --seed 1 --runs nf2,nf8,nf32,cnf_planar2,cnf_planar8,cnf_planar32
