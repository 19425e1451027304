"""Temperature schedules for the LWTA competition (DISCOVER, Panousis et al. 2023, eq. 1: T in
softmax(h/T + g)). The reference code meant to anneal T every 5 epochs but wrote ``epoch + 1 % 5``
(always ``epoch + 1``), so it never fired; these schedules are plain functions of the epoch and the
tests check that each one changes T.

``make_schedule(kind, t0, **kw)`` returns ``f(epoch) -> T`` (epoch counted from 0); the decaying kinds
``step``, ``exponential`` and ``cosine`` are floored at ``t_min``:
- ``constant``: t0 (no floor: a constant T below the default t_min, DISCOVER's DeiT T = 0.01, stays T)
- ``step``: t0 * gamma ** (epoch // step_size)            (kw: step_size, gamma)
- ``exponential``: t0 * gamma ** epoch                    (kw: gamma)
- ``cosine``: t_min + (t0 - t_min) (1 + cos(pi e / epochs)) / 2, e = min(epoch, epochs)  (kw: epochs)
- ``discover``: the annealing DISCOVER's code meant to run: after every 5th epoch, T <- T / 1.5 while
  T >= 0.3. In closed form T(e) = t0 / 1.5 ** min(e // 5, K), K = #{n >= 0 : t0 / 1.5 ** n >= 0.3} (the
  divisions the rule makes before T drops below 0.3; K = 0 when t0 < 0.3). E.g. t0 = 1.67 (ResNet):
  1.67, 1.113, 0.742, 0.495, 0.330, then 0.220 from epoch 25 on. Its constants are the rule's, no keywords.

A keyword left out takes the config schema's default (the field of the same name in
:class:`lwtakit.config.TemperatureConfig`, what training uses unless a config sets it); ``epochs`` has none."""

from __future__ import annotations

import math
from collections.abc import Callable

from lwtakit.config import TemperatureConfig
from lwtakit.errors import UserError

KINDS = ("constant", "step", "exponential", "cosine", "discover")
SCHEDULE_ARGS = {
    "constant": set(),
    "step": {"t_min", "step_size", "gamma"},
    "exponential": {"t_min", "gamma"},
    "cosine": {"t_min", "epochs"},
    "discover": set(),
}
# DISCOVER's intended rule: every DISCOVER_EVERY epochs, T <- T / DISCOVER_FACTOR while T >= DISCOVER_STOP.
DISCOVER_EVERY, DISCOVER_FACTOR, DISCOVER_STOP = 5, 1.5, 0.3
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

    if kind == "constant":
        return lambda epoch: t0
    if kind == "discover":
        return _discover(t0)

    def schedule(epoch: int) -> float:
        e = max(0, int(epoch))
        if kind == "step":
            t = t0 * gamma ** (e // step_size)
        elif kind == "exponential":
            t = t0 * gamma**e
        else:
            n = int(epochs)
            t = t_min + (t0 - t_min) * 0.5 * (1 + math.cos(math.pi * min(e, n) / n))
        return max(t_min, t)

    return schedule


def _discover(t0: float) -> Callable[[int], float]:
    """DISCOVER's intended annealing (see the module docstring): t0 divided by 1.5 once per 5 epochs, at most
    K times, K the divisions that start from T >= 0.3."""
    divisions, t = 0, t0
    while t >= DISCOVER_STOP:
        t /= DISCOVER_FACTOR
        divisions += 1

    def schedule(epoch: int) -> float:
        t = t0
        for _ in range(min(max(0, int(epoch)) // DISCOVER_EVERY, divisions)):
            t /= DISCOVER_FACTOR
        return t

    return schedule
