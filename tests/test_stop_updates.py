"""--stop-updates-frac: no periodic topology updates in the last part of every ticket phase.

Expected steps and windows are worked out by hand in the comments; the default (0) must give
exactly the updates of before, and a last.pth written before the flag existed must still resume.
"""
import pytest
import torch
from torch import nn

from sparselearning import checkpoint as ckpt
from sparselearning.cli import build_parser, common_parser, parser_defaults, validate
from sparselearning.core.masking import Masking
from sparselearning.core.schedules import Schedule, edst_schedule, factor_schedule, step_schedule
from sparselearning.errors import UsageError
from sparselearning.recipes import cifar_plan, main
from sparselearning.train import Run, start_run

pytestmark = pytest.mark.usefixtures("single_torch_thread")


# ------------------------------------------------------------------ the windows, from the schedule
def test_windows_of_one_phase_edst_and_imagenet_schedules():
    # one phase of 20 steps (1 epoch x 20), last quarter = 5 steps: 16..20
    assert step_schedule(1, 0.1).update_free_windows(20, 0.25) == ((16, 20),)
    # EDST 10 epochs, 6 exploring, 2 phases [6, 8) and [8, 10); 10 steps an epoch: steps 61..80 and 81..100,
    # each 20 long -> 5 quiet steps at the end of each; the exploration (steps 1..60) keeps updating
    assert edst_schedule(10, 6, 2, 0.1).update_free_windows(10, 0.25) == ((76, 80), (96, 100))
    # ImageNet-style phases (0, 4), (4, 7), (7, 10) at 5 steps an epoch: 20, 15, 15 steps -> 4, 3, 3 quiet
    plan = factor_schedule(10, 0.1, (4, 7), (), 0)
    assert plan.update_free_windows(5, 0.2) == ((17, 20), (33, 35), (48, 50))
    # off, and a fraction too small for one step
    assert step_schedule(1, 0.1).update_free_windows(20, 0.0) == ()
    assert step_schedule(1, 0.1).update_free_windows(20, 0.01) == ()
    assert Schedule(3, ((0, 0.1),)).update_free_windows(7, 0.5) == ((11, 21),)  # 10.5 rounds to 11 quiet steps


# ------------------------------------------------------------------ Masking alone
def _update_steps(windows=(), steps=20, frequency=2):
    """The steps (1-based) at which Masking ran a topology update, and the masks before/after the last window."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    mask = Masking(opt, death_rate=0.5, update_frequency=frequency, no_update_windows=windows)
    mask.add_module(model, density=0.3, sparse_init="uniform")
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    updated, snapshots = [], {}
    for step in range(1, steps + 1):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if mask.step():
            updated.append(step)
        snapshots[step] = {n: m.clone() for n, m in mask.masks.items()}
    mask.check_invariants()  # gradients were still masked in the window: inactive weights stay zero
    return updated, snapshots, mask


def test_masking_skips_updates_inside_the_windows():
    # update every 2 steps, phase of 20 steps, last quarter off: updates at 2, 4, ..., 14 only
    windows = step_schedule(1, 0.1).update_free_windows(20, 0.25)
    updated, snaps, mask = _update_steps(windows)
    assert updated == [2, 4, 6, 8, 10, 12, 14]
    assert mask.num_updates == 7
    assert all(torch.equal(snaps[15][n], snaps[20][n]) for n in snaps[20])  # the topology froze after step 14
    assert any(not torch.equal(snaps[1][n], snaps[15][n]) for n in snaps[15])  # ... and moved before


def test_default_gives_todays_updates():
    updated, snaps, mask = _update_steps()
    assert updated == list(range(2, 21, 2))
    assert Masking(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)).no_update_windows == ()
    # the same run as Masking without the new argument at all
    plain_updated, plain_snaps, _ = _update_steps(windows=())
    assert plain_updated == updated and all(torch.equal(snaps[20][n], plain_snaps[20][n]) for n in snaps[20])


def test_masking_rejects_bad_windows():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    for bad in ([(0, 3)], [(5, 4)]):
        with pytest.raises(ValueError, match="no_update_windows"):
            Masking(opt, no_update_windows=bad)


# ------------------------------------------------------------------ end to end
def _common(data_dir, out, *extra):
    return ["--model", "cnn-small", "--data", "fashionmnist", "--data-dir", str(data_dir), "--batch-size", "32",
            "--test-batch-size", "64", "--output-dir", str(out), "--no-progress", "--seed", "1", *map(str, extra)]


def test_edst_run_counts_updates_per_phase(fmnist_dir, tmp_path):
    out = tmp_path / "results"
    main("EDST", ["--sparse", "--epochs", "5", "--epochs-explo", "1", "--model-num", "2", "--density", "0.2",
                  "--update-frequency", "2", "--stop-updates-frac", "0.5", *_common(fmnist_dir, out)])
    state = ckpt.safe_load(out / "cnn-small/fashionmnist/density_0.2/EDST/M=2/seed=1/last.pth")
    masking = state["masking"]
    # 270 training images (300 less the 10% validation tail), batch 32 -> 9 steps an epoch, 45 in all
    assert masking["steps"] == 45
    # phases: epochs [1, 3) = steps 10..27 and [3, 5) = steps 28..45; half of 18 = 9 quiet steps: 19..27, 37..45.
    # Even steps 2..44 are 22 updates; 20, 22, 24, 26 and 38, 40, 42, 44 fall in the windows -> 14,
    # plus the one re-exploration after epoch 3
    assert masking["num_updates"] == 14 + 1
    assert state["flags"]["stop_updates_frac"] == 0.5


def test_checkpoint_from_before_the_flag_resumes(fmnist_dir, tmp_path):
    argv = ["--sparse", "--density", "0.2", "--epochs", "2", "--update-frequency", "4", *_common(fmnist_dir,
                                                                                                  tmp_path / "r")]
    parser = build_parser("DST")
    args = parser.parse_args(argv)
    validate("DST", args)
    run = Run(cifar_plan("DST", args, parser_defaults(parser)))
    run.total_epochs = 1  # stop after the first epoch, as if interrupted there
    start_run(run)
    last = run.run_dir / "last.pth"
    state = ckpt.safe_load(last)
    assert state["epoch"] == 1 and state["flags"]["stop_updates_frac"] == 0.0
    del state["flags"]["stop_updates_frac"]  # what a last.pth written before the flag holds
    ckpt.atomic_save(state, last)

    with pytest.raises(UsageError, match="stop_updates_frac"):  # a different value is a different run
        main("DST", [*argv, "--resume", "--stop-updates-frac", "0.5"])
    resumed = main("DST", [*argv, "--resume"])
    assert resumed["status"] == "finished" and resumed["epochs_done"] == 2 and len(resumed["history"]) == 2

    main("DST", [*argv, "--output-dir", str(tmp_path / "straight")])  # the same run, never interrupted
    one = ckpt.safe_load(last)
    other = ckpt.safe_load(tmp_path / "straight" / run.run_dir.relative_to(tmp_path / "r") / "last.pth")
    assert one["masking"]["num_updates"] == other["masking"]["num_updates"] > 0
    for name, tensor in other["model"].items():
        assert torch.equal(one["model"][name], tensor), name


def test_flag_in_help_with_default_and_bad_value_exit_2(tmp_path, capsys):
    # the four CIFAR scripts, and the common parser ImageNet/main.py builds on
    for parser in (*(build_parser(s) for s in ("individual", "DST", "EDST", "PF")), common_parser("x", "y")):
        text = " ".join(parser.format_help().split())
        assert "--stop-updates-frac F" in text
        assert "(default: 0.0)" in text.split("--stop-updates-frac F")[-1][:600]
    with pytest.raises(SystemExit) as exit_:
        main("DST", ["--sparse", "--model", "cnn-small", "--stop-updates-frac", "1", "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--stop-updates-frac" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
