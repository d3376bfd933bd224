"""From flags to a RunPlan (sparselearning/recipes.py): what each script's flags make of the run."""
import pytest

from sparselearning.cli import build_parser, validate
from sparselearning.core.masking import MaskingConfig
from sparselearning.recipes import cifar_plan


def plan_of(script, *flags):
    args = build_parser(script).parse_args(["--model", "cnn-small", "--output-dir", "unused", *flags])
    validate(script, args)
    return cifar_plan(script, args, {})


def _pf_rate(*flags):
    args = build_parser("PF").parse_args(["--model", "cnn-small", "--pretrained", "x.pth", *flags])
    validate("PF", args)
    assert "_given_flags" not in vars(args)  # no trace in the flags (nor in the resume fingerprint)
    return args.PF_rate


def test_pf_rate_rule():
    """An explicit --PF-rate wins; else 1 - --density when --density is given; else 0.8."""
    assert _pf_rate() == 0.8
    assert _pf_rate("--density", "0.1") == pytest.approx(0.9)
    assert _pf_rate("--density", "0.1", "--PF-rate", "0.7") == _pf_rate("--PF-rate", "0.7", "--density", "0.1") == 0.7
    args = build_parser("PF").parse_args(["--model", "cnn-small", "--pretrained", "x.pth", "--density", "0.1"])
    validate("PF", args)
    assert cifar_plan("PF", args, {}).run_dir.parts[-3] == "density_0.1"


def test_sparse_flags_become_the_masking_config():
    plan = plan_of("DST", "--sparse", "--density", "0.3", "--death", "SET", "--growth", "random", "--redistribution",
                   "magnitude", "--death-rate", "0.4", "--decay-schedule", "cosine", "--final-death-rate", "0.01",
                   "--update-frequency", "7", "--death-threshold", "0.002", "--momentum", "0.8", "--seed", "5",
                   "--large-death-rate", "0.6", "--stop-updates-frac", "0.25")
    assert plan.sparse.masking == MaskingConfig(death_rate=0.4, death_mode="SET", growth_mode="random",
                                                redistribution_mode="magnitude", death_rate_schedule="cosine",
                                                final_death_rate=0.01, update_frequency=7, threshold=0.002,
                                                momentum_beta=0.8, seed=5)
    assert plan.sparse.init == {"density": 0.3, "sparse_init": "ERK", "erk_power_scale": 1.0}
    assert (plan.sparse.reexplore_rate, plan.sparse.stop_updates_frac, plan.sparse.fixed_mask) == (0.6, 0.25, False)
    assert (plan.kind, plan.seed, plan.batch_size, plan.model_name) == ("DST", 5, 128, "cnn-small")


@pytest.mark.parametrize("script, flags, kind, fixed", [
    ("DST", ["--sparse", "--fix"], "static", True),
    ("PF", ["--pretrained", "x.pth"], "PF", True),
    ("EDST", ["--sparse"], "EDST", False),
    ("individual", ["--sparse"], "sparse", False),
])
def test_fixed_masks_have_no_update_frequency(script, flags, kind, fixed):
    plan = plan_of(script, *flags)
    assert plan.kind == kind and plan.sparse.fixed_mask == fixed
    assert (plan.sparse.masking.update_frequency is None) == fixed


def test_dense_run_has_no_sparse_plan():
    plan = plan_of("individual")
    assert plan.kind == "dense" and plan.sparse is None
    assert plan.resume is None and not plan.overwrite and plan.save_every == 0 and plan.log_every == 100


def test_density_on_a_dense_run_is_noted_not_refused(capsys):
    """The paper's dense pre-training command passes --density to main_individual.py: it runs dense and says so."""
    plan = plan_of("individual", "--density", "0.3")
    out = capsys.readouterr().out
    assert "--density 0.3 applies to sparse runs" in out and "add --sparse" in out
    assert plan.sparse is None and plan.run_dir.parts[-3:-1] == ("individual", "dense")
