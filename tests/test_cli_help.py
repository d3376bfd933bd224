"""--help of every script: each flag has a help line that shows its default; --model lists the models."""
import argparse

import pytest

from helpers import REPO, load_module
from models import MODEL_NAMES
from sparselearning.cli import build_parser
from sparselearning.evaluation.cli import build_parser as eval_parser


def imagenet_parser():
    return load_module(REPO / "ImageNet" / "main.py", "imagenet_main").imagenet_flags()


PARSERS = {**{f"main_{s}.py": (lambda s=s: build_parser(s)) for s in ("individual", "DST", "EDST", "PF")},
           "ImageNet/main.py": imagenet_parser, "ensemble_freetickets.py": eval_parser}


@pytest.mark.parametrize("script", list(PARSERS))
def test_every_flag_has_help_with_its_default(script):
    parser = PARSERS[script]()
    text = parser.format_help()
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{script} {action.option_strings} has no help line"
        if action.default in (argparse.SUPPRESS, None, False, True, ""):  # shown as the formatter words it
            continue
        shown = " ".join(parser._get_formatter()._expand_help(action).split())  # what --help prints for it
        assert str(action.default) in shown, f"{script} {action.option_strings}: default {action.default} not in " \
                                             f"{shown!r}"
    assert "(default:" in text


@pytest.mark.parametrize("script", [s for s in PARSERS if s.startswith("main_")])
def test_model_help_lists_the_models(script):
    text = " ".join(PARSERS[script]().format_help().split())
    for name in MODEL_NAMES:
        assert name in text.replace("- ", "-"), name
