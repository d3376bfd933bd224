#!/usr/bin/env python
"""Evaluate FreeTickets ensembles: predict, disagreement, calibration, KD, tsne, ood, corruption (or all).

    python ensemble_freetickets.py --mode predict --resume results/wrn-28-10/cifar10/density_0.2/DST/ \
        --dataset cifar10 --model wrn-28-10 --seed 18 --test-batch-size 128

Compare several methods' ensembles in the paper's Table 1 layout (folders without results are
evaluated first; outputs go to --output-dir, default <parent of the first folder>/compare):

    python ensemble_freetickets.py --compare results/wrn-28-10/cifar10/density_0.2/DST/ \
        results/wrn-28-10/cifar10/density_0.2/EDST/M=3/ results/wrn-28-10/cifar10/density_1/dense/

Everything happens in :mod:`sparselearning.evaluation`; see ``--help`` for the flags and that package's
docstring for the output layout. Bad input: one line on stderr, exit code 2.
"""
from sparselearning.errors import run_cli
from sparselearning.evaluation import main

if __name__ == "__main__":
    run_cli(main, on_stop="the logit cache keeps every finished forward pass - run the same command again to go on")
