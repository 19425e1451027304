"""How numbers and values read in a report; each is also a jinja filter (see :mod:`lwtakit.report.page`).

Every function returns plain text: escaping is the template's job (autoescape), never done here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np


def as_float(x: Any) -> float | None:
    """``x`` as a float (numpy scalars, numeric strings from a CSV included), or None if it is not a number."""
    if x is None or isinstance(x, bool):
        return None if x is None else float(x)
    if hasattr(x, "item") and getattr(x, "ndim", 0) == 0:
        x = x.item()
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v


def is_number(v: Any) -> bool:
    """A real number (Python or numpy), not a bool: shown right-aligned and sortable."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def fmt_num(x: Any, sig: int = 3) -> str:
    """Numbers with ``sig`` significant digits (integers as they are); missing / NaN -> an en dash."""
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    v = as_float(x)
    if v is None:
        return "" if x is None or x == "" else str(x)
    if math.isnan(v):
        return "–"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if isinstance(x, str) and re.fullmatch(r"\s*[-+]?\d+\s*", x):  # an integer read back from CSV
        return str(int(x))
    return f"{v:.{sig}g}"


def fmt_p(x: Any) -> str:
    """p-values in scientific notation with two significant digits (``3.2e-12``); 0 (underflow) -> ``<1e-300``."""
    v = as_float(x)
    if v is None or math.isnan(v):
        return "–"
    if v == 0.0:
        return "<1e-300"
    return f"{v:.1e}"


def fmt_pct(x: Any) -> str:
    """A fraction as a percentage with three significant digits (``0.25`` -> ``25%``); missing -> an en dash."""
    v = as_float(x)
    if v is None or math.isnan(v):
        return "–"
    return f"{100 * v:.3g}%"


def fmt_value(v: Any) -> str:
    """A meta / evaluation value: numbers 3 significant digits, mappings ``k=v; ...``, sequences ``a, b``."""
    if v is None:
        return "–"
    if isinstance(v, Mapping):
        return "; ".join(f"{k}={fmt_value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt_value(x) for x in v)
    if is_number(v):
        return fmt_num(v)
    return str(v)


def sort_key(x: float | None) -> str | None:
    """What a sortable cell's ``data-v`` holds: the float's repr; None for a missing / NaN value (no attribute)."""
    if x is None or math.isnan(x):
        return None
    return repr(float(x))


def top5_text(row: Mapping[str, Any]) -> str:
    """The hover text listing a label row's runner-up concepts (its ``top5``), or "" when it has none."""
    t5 = row.get("top5")
    if t5 is None or t5 == "":
        return ""
    if isinstance(t5, (list, tuple)):
        t5 = ", ".join(str(x) for x in t5)
    return "top-5: " + str(t5)


def slug(name: str, used: set[str]) -> str:
    """An HTML id for ``name`` (letters, digits, ``_``, ``-``) not yet in ``used``; it is added to ``used``."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "x"
    out, i = base, 2
    while out in used:
        out, i = f"{base}-{i}", i + 1
    used.add(out)
    return out
