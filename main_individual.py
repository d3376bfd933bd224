"""Train one model (dense, or sparse with --sparse): a deep-ensemble member or PF's dense start."""
from sparselearning.errors import run_cli
from sparselearning.launch import launch_members
from sparselearning.recipes import main

if __name__ == "__main__":
    launch_members("individual")  # --seeds / --launcher slurm: starts the members and exits
    run_cli(lambda argv: main("individual", argv))
