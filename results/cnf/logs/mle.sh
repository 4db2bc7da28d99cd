#!/bin/sh
# Waits for the density grid (NF reruns), then the MLE grid.
while pgrep -f "experiments.cnf grid density" > /dev/null; do sleep 10; done
python -m experiments.cnf grid mle --root runs/cnf --steps 1000 --batch-size 512 --no-progress --runs nf64,cnf_planar64,cnf_mlp_hutch
python -m experiments.cnf grid mle --root runs/cnf --steps 1000 --batch-size 512 --no-progress --runs cnf_mlp_exact --data 8gaussians,checkerboard,2spirals
