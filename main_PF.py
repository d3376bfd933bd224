"""Train one PF-ensemble member: prune a dense checkpoint, fine-tune with a fixed mask."""
from sparselearning.errors import run_cli
from sparselearning.launch import launch_members
from sparselearning.recipes import main

if __name__ == "__main__":
    launch_members("PF")  # --seeds / --launcher slurm: starts the members and exits
    run_cli(lambda argv: main("PF", argv))
