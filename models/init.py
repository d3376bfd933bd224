"""Kaiming-normal conv initialisation shared by the ResNets and cnn-small (ReLU networks)."""
from __future__ import annotations

import torch.nn as nn

INITS: tuple[str, ...] = ("classic", "fanin")


def init_weights(model: nn.Module, init: str = "classic") -> None:
    """Re-initialise conv and BN parameters in place (``classic``: fan_out, ``fanin``: fan_in)."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    mode = "fan_out" if init == "classic" else "fan_in"
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode=mode, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
