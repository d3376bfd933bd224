#!/usr/bin/env python
"""Evaluate FreeTickets ensembles: predict, disagreement, calibration, KD, tsne, ood, corruption (or all).

    python ensemble_freetickets.py --mode predict --resume results/wrn-28-10/cifar10/density_0.2/DST/ \
        --dataset cifar10 --model wrn-28-10 --seed 18 --test-batch-size 128

Everything happens in :mod:`sparselearning.evaluation`; see ``--help`` for the flags and that module's
docstring for the output layout. Bad input: one line on stderr, exit code 2.
"""
from sparselearning.errors import run_cli
from sparselearning.evaluation import main

if __name__ == "__main__":
    run_cli(main)
