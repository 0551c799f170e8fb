"""ODE solvers for ``dx/dt = f(x, t)`` on [t0, t1] that count network evaluations (pure torch).

Fixed-step: Euler (order 1, 1 evaluation per step), explicit midpoint and Heun
(order 2, 2 per step). Adaptive: Dormand–Prince 5(4) ("dopri5") with error control.
Every solver returns ``(x, nfe)`` where ``nfe`` is the number of calls of ``f`` it made
— counted, not computed from a formula — so sampling cost is reported as spent.

The state is one tensor whose first dimension is the batch; the time is a Python float
(the caller turns it into the network's (B,) time tensor).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from segflow.infra.progress import sampling_steps

VelocityFn = Callable[[Tensor, float], Tensor]
FIXED_STEP_SOLVERS = ("euler", "midpoint", "heun")
SOLVERS = (*FIXED_STEP_SOLVERS, "dopri5")


class CountingFn:
    """Wraps ``f(x, t)`` and counts its calls."""

    def __init__(self, f: VelocityFn):
        self.f, self.nfe = f, 0

    def __call__(self, x: Tensor, t: float) -> Tensor:
        self.nfe += 1
        return self.f(x, t)


def _fixed(f: VelocityFn, x: Tensor, t0: float, t1: float, steps: int, solver: str) -> Tensor:
    h = (t1 - t0) / steps
    for i in sampling_steps(range(steps), f"{solver} ODE"):
        t = t0 + i * h  # from the index, not accumulated, so the grid has no drift
        if solver == "euler":
            x = x + h * f(x, t)
        elif solver == "midpoint":
            x = x + h * f(x + 0.5 * h * f(x, t), t + 0.5 * h)
        else:  # heun: explicit trapezoidal rule
            k1 = f(x, t)
            k2 = f(x + h * k1, t + h)
            x = x + 0.5 * h * (k1 + k2)
    return x


# Dormand & Prince (1980), "A family of embedded Runge-Kutta formulae", J. Comp. Appl.
# Math. 6(1): nodes, stages and the 5th-order weights (= last stage row: FSAL).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
_E = tuple(b5 - b4 for b5, b4 in zip(_B5, _B4, strict=True))


def _error_norm(err: Tensor, scale: Tensor) -> float:
    """RMS of err/scale per batch element, then the maximum over the batch: every ensemble
    member and image meets the tolerance (an RMS over the whole batch would let a large
    batch hide one badly integrated sample)."""
    r = (err / scale).flatten(1).float()
    return float(r.pow(2).mean(dim=1).sqrt().max())


def _initial_step(f: VelocityFn, x: Tensor, t0: float, k1: Tensor, atol: float, rtol: float,
                  span: float) -> float:
    """Starting step size (Hairer, Nørsett & Wanner, Solving ODEs I, II.4): one extra call."""
    scale = atol + rtol * x.abs()
    d0, d1 = _error_norm(x, scale), _error_norm(k1, scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    k2 = f(x + h0 * k1, t0 + h0)
    d2 = _error_norm(k2 - k1, scale) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
    return min(100 * h0, h1, span)


def dopri5(f: VelocityFn, x: Tensor, t0: float = 0.0, t1: float = 1.0, atol: float = 1e-5,
           rtol: float = 1e-5, max_nfe: int = 10_000, safety: float = 0.9) -> Tensor:
    """Adaptive Dormand–Prince 5(4) with local extrapolation (the 5th-order solution is
    propagated), first-same-as-last, and the standard step-size controller
    ``h ← h · clip(safety · err^(-1/5), 0.2, 10)`` (no growth right after a rejection).

    Costs 6 evaluations per attempted step plus 2 at the start (first stage and the
    initial step-size probe).

    Raises:
        RuntimeError: more than ``max_nfe`` evaluations (a stiff or diverging field).
    """
    counter = f if isinstance(f, CountingFn) else CountingFn(f)
    span = t1 - t0
    if span == 0:
        return x
    t, k1 = t0, counter(x, t0)
    h = _initial_step(counter, x, t0, k1, atol, rtol, span)
    rejected = False
    while t1 - t > 1e-12 * max(1.0, abs(t1)):
        if counter.nfe > max_nfe:
            raise RuntimeError(f"dopri5 used more than max_nfe={max_nfe} evaluations at t={t:.4g}; "
                               f"loosen atol/rtol or use a fixed-step solver")
        h = min(h, t1 - t)
        ks = [k1]
        for i in range(1, 7):
            xi = x + h * sum(a * k for a, k in zip(_A[i], ks, strict=False) if a != 0.0)
            ks.append(counter(xi, t + _C[i] * h))
        x_new = xi  # the last stage is evaluated at the 5th-order solution (FSAL)
        err = h * sum(e * k for e, k in zip(_E, ks, strict=True) if e != 0.0)
        scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
        norm = _error_norm(err, scale)
        if norm <= 1.0:
            t, x, k1 = t + h, x_new, ks[6]
            factor = 10.0 if norm == 0 else min(10.0, max(0.2, safety * norm ** -0.2))
            h *= min(1.0, factor) if rejected else factor
            rejected = False
        else:
            h *= max(0.2, safety * norm ** -0.2)
            rejected = True
        if not math.isfinite(norm):
            raise RuntimeError("dopri5: the velocity field returned non-finite values")
    return x


def solve(f: VelocityFn, x: Tensor, solver: str = "euler", steps: int = 10, t0: float = 0.0,
          t1: float = 1.0, atol: float = 1e-5, rtol: float = 1e-5,
          max_nfe: int = 10_000) -> tuple[Tensor, int]:
    """Integrate ``dx/dt = f(x, t)`` from ``t0`` to ``t1``.

    Args:
        f: the velocity field; ``f(x, t)`` with ``x`` like the state, ``t`` a float.
        x: (B, ...) the state at ``t0``.
        solver: ``euler``, ``midpoint``, ``heun`` (``steps`` uniform steps) or ``dopri5``
            (adaptive; ``steps`` is ignored, ``atol``/``rtol`` set the accuracy).

    Returns:
        (x at ``t1``, the number of evaluations of ``f`` used).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    counter = CountingFn(f)
    if solver == "dopri5":
        x = dopri5(counter, x, t0, t1, atol, rtol, max_nfe)
    else:
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        x = _fixed(counter, x, t0, t1, int(steps), solver)
    return x, counter.nfe
