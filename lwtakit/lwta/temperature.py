"""Temperature schedules for the LWTA competition (DISCOVER, Panousis et al. 2023, eq. 1: T in
softmax(h/T + g)). The reference code meant to anneal T every 5 epochs but wrote ``epoch + 1 % 5``
(always ``epoch + 1``), so it never fired; these schedules are plain functions of the epoch and the
tests check that each one changes T.

``make_schedule(kind, t0, **kw)`` returns ``f(epoch) -> T`` (epoch counted from 0), floored at
``t_min``:
- ``constant``: t0
- ``step``: t0 * gamma ** (epoch // step_size)            (kw: step_size, gamma)
- ``exponential``: t0 * gamma ** epoch                    (kw: gamma)
- ``cosine``: t_min + (t0 - t_min) (1 + cos(pi e / epochs)) / 2, e = min(epoch, epochs)  (kw: epochs)

A keyword left out takes the config schema's default (the field of the same name in
:class:`lwtakit.config.TemperatureConfig`, what training uses unless a config sets it); ``epochs`` has none."""

from __future__ import annotations

import math
from collections.abc import Callable

from lwtakit.config import TemperatureConfig
from lwtakit.errors import UserError

KINDS = ("constant", "step", "exponential", "cosine")
SCHEDULE_ARGS = {
    "constant": {"t_min"},
    "step": {"t_min", "step_size", "gamma"},
    "exponential": {"t_min", "gamma"},
    "cosine": {"t_min", "epochs"},
}
_DEFAULTS = TemperatureConfig()  # the one set of defaults: the config schema's


def make_schedule(kind: str, t0: float, **kw) -> Callable[[int], float]:
    """Schedule ``epoch -> temperature``; see the module docstring for the formulas."""
    if kind not in KINDS:
        raise UserError(f"unknown temperature schedule {kind!r}; use one of {', '.join(KINDS)}")
    unknown = set(kw) - SCHEDULE_ARGS[kind]
    if unknown:
        raise UserError(f"schedule {kind!r} takes {sorted(SCHEDULE_ARGS[kind])}, not {sorted(unknown)}")
    t0 = float(t0)
    t_min = float(kw.get("t_min", _DEFAULTS.t_min))
    if not (t0 > 0 and t_min > 0):
        raise UserError(f"temperatures must be positive, got t0={t0} t_min={t_min}")
    gamma = float(kw.get("gamma", _DEFAULTS.gamma))
    if kind in ("step", "exponential") and not 0 < gamma:
        raise UserError(f"gamma must be > 0, got {gamma}")
    step_size = int(kw.get("step_size", _DEFAULTS.step_size))
    if step_size < 1:
        raise UserError(f"step_size must be >= 1 epoch, got {step_size}")
    epochs = kw.get("epochs")
    if kind == "cosine" and (epochs is None or int(epochs) < 1):
        raise UserError("cosine temperature schedule needs epochs >= 1 (the annealing length)")

    def schedule(epoch: int) -> float:
        e = max(0, int(epoch))
        if kind == "constant":
            t = t0
        elif kind == "step":
            t = t0 * gamma ** (e // step_size)
        elif kind == "exponential":
            t = t0 * gamma**e
        else:
            n = int(epochs)
            t = t_min + (t0 - t_min) * 0.5 * (1 + math.cos(math.pi * min(e, n) / n))
        return max(t_min, t)

    return schedule
