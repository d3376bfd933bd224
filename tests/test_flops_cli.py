"""python -m sparselearning.flops_cli: a model's per-layer FLOPs table."""
import pytest

from models import get_model
from sparselearning.errors import UsageError
from sparselearning.flops_cli import main


def test_table_counts_the_models_parameters(capsys):
    main(["--model", "lenet300-100", "--data", "fashionmnist", "--density", "0.1"])
    out = capsys.readouterr().out
    assert sum(p.numel() for p in get_model("lenet300-100", 10, 1, 28).parameters()) == 266_610
    assert "parameters: dense 266,610" in out
    # by hand: 2 x (784*300 + 300*100 + 100*10) = 532,800 dense multiply-add FLOPs in the three layers
    assert "fc1.weight" in out and "fc3.weight" in out and "dense 0.0005" in out


def test_bad_model_or_density_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown model"):
        main(["--model", "nope"])
    with pytest.raises(UsageError, match="--density"):
        main(["--model", "lenet300-100", "--density", "0"])
