"""CSV cells that a spreadsheet shows as text, never runs as a formula (OWASP's CSV-injection advice).

A text cell beginning with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (a folder named
``=1+2``, a method string from a ticket) gets a leading ``'``. Numbers stay numbers: ints, floats
and text that reads as a number (``-0.5``, ``-inf``) are written as they are.
"""
from __future__ import annotations

from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """`value` as a CSV writer should get it: text that could start a formula prefixed with ``'``."""
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
        return value  # a number written as text
    except ValueError:
        return "'" + value
