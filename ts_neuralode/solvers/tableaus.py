"""Butcher tableaus and dense-output interpolants of every method, as plain Python floats.

Every method is one :class:`Tableau` on the shared Runge–Kutta core (``core.py``):

* ``a``/``b``/``c`` — the Butcher tableau (``a[i]`` holds the weights of stage ``i`` on stages ``0..i-1``);
* ``e`` — error weights ``b - b_hat`` (``None`` for fixed-step methods);
* ``interp`` — the dense output as polynomial coefficients: for ``θ ∈ [0, 1]``
  ``y(t0 + θ·h) = y0 + h · Σ_s Σ_p interp[s][p] · θ^(p+1) · k_s``.
  Writing the interpolant in this "stage × power" form lets the core evaluate all output times of all
  samples at once with one gather and one small matmul after the loop (no per-step work, no stopping at
  output times).

Coefficients are Python floats on purpose: they become scalar arguments of ``torch.add(..., alpha=)`` /
``addcmul`` and never cost a host→device copy or a tensor allocation per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Tableau:
    name: str
    order: int  # order of the propagated solution
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    e: tuple[float, ...] | None  # b - b_hat (error estimate weights); None for fixed-step methods
    interp: tuple[tuple[float, ...], ...]  # [S][P] coefficients of θ^1..θ^P per stage
    fsal: bool  # first stage of the next step == last stage of this one
    error_order: int = 0  # order of the embedded solution (for the step-size controller exponent)

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.e is not None


# ---------------------------------------------------------------------------------------------------
# small exact polynomial algebra (lists of Fractions, index = power) used only at import time
def _pmul(p, q):
    out = [Fraction(0)] * (len(p) + len(q) - 1)
    for i, x in enumerate(p):
        for j, y in enumerate(q):
            out[i + j] += x * y
    return out


def _solve(m, r):
    """Solve m x = r (m: n×n Fractions, r: n×k Fractions) by Gauss–Jordan elimination."""
    n = len(m)
    aug = [list(m[i]) + list(r[i]) for i in range(n)]
    for col in range(n):
        piv = next(i for i in range(col, n) if aug[i][col] != 0)
        aug[col], aug[piv] = aug[piv], aug[col]
        pv = aug[col][col]
        aug[col] = [v / pv for v in aug[col]]
        for i in range(n):
            if i != col and aug[i][col] != 0:
                f = aug[i][col]
                aug[i] = [vi - f * vc for vi, vc in zip(aug[i], aug[col], strict=True)]
    return [row[n:] for row in aug]


def _hermite_interp(b, last_stage, mid=None):
    """Coefficients of the Hermite interpolant of the step increment Δ(θ) = y(θ) − y0 in stage form.

    Conditions: Δ'(0) = h·k_0, Δ(1) = h·Σ b_s k_s, Δ'(1) = h·k_last (FSAL: k_last = f(t1, y1)) and, when
    ``mid`` is given, Δ(1/2) = h·Σ mid_s k_s (quartic). Solved exactly once at import time.
    """
    s_count = len(b)
    deg = 4 if mid is not None else 3
    powers = range(1, deg + 1)
    rows, rhs = [], []
    rows.append([Fraction(1) if p == 1 else Fraction(0) for p in powers])  # Δ'(0)
    rhs.append([Fraction(1) if s == 0 else Fraction(0) for s in range(s_count)])
    rows.append([Fraction(1) for _ in powers])  # Δ(1)
    rhs.append([Fraction(x) for x in b])
    rows.append([Fraction(p) for p in powers])  # Δ'(1)
    rhs.append([Fraction(1) if s == last_stage else Fraction(0) for s in range(s_count)])
    if mid is not None:
        rows.append([Fraction(1, 2**p) for p in powers])  # Δ(1/2)
        rhs.append([Fraction(x) for x in mid])
    coef = _solve(rows, rhs)  # [P][S]
    return tuple(tuple(float(coef[p][s]) for p in range(deg)) for s in range(s_count))


def _poly_interp(polys):
    """polys[s] = list of coefficients of b_s(θ) (index = power, constant term must be 0)."""
    deg = max(len(p) for p in polys) - 1
    out = []
    for p in polys:
        assert abs(float(p[0])) < 1e-14
        out.append(tuple(float(p[i]) if i < len(p) else 0.0 for i in range(1, deg + 1)))
    return tuple(out)


def _F(x):
    return Fraction(x) if not isinstance(x, float) else Fraction(x).limit_denominator(10**18)


# ---------------------------------------------------------------------------------------------------
# fixed-step methods
EULER = Tableau("euler", 1, (0.0,), ((),), (1.0,), None, ((1.0,),), fsal=False)

# explicit midpoint; continuous extension b0(θ) = θ − θ², b1(θ) = θ² (order 2)
MIDPOINT = Tableau("midpoint", 2, (0.0, 0.5), ((), (0.5,)), (0.0, 1.0), None, ((1.0, -1.0), (0.0, 1.0)), fsal=False)

# classic RK4; its order-3 continuous extension
# b0 = θ − 3θ²/2 + 2θ³/3, b1 = b2 = θ² − 2θ³/3, b3 = −θ²/2 + 2θ³/3
RK4 = Tableau(
    "rk4",
    4,
    (0.0, 0.5, 0.5, 1.0),
    ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    (1 / 6, 1 / 3, 1 / 3, 1 / 6),
    None,
    ((1.0, -1.5, 2 / 3), (0.0, 1.0, -2 / 3), (0.0, 1.0, -2 / 3), (0.0, -0.5, 2 / 3)),
    fsal=False,
)

# ---------------------------------------------------------------------------------------------------
# Bogacki–Shampine 3(2), FSAL; cubic Hermite dense output (exact in stage form)
_BS_B = (Fraction(2, 9), Fraction(1, 3), Fraction(4, 9), Fraction(0))
_BS_BHAT = (Fraction(7, 24), Fraction(1, 4), Fraction(1, 3), Fraction(1, 8))
BOSH3 = Tableau(
    "bosh3",
    3,
    (0.0, 0.5, 0.75, 1.0),
    ((), (0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9)),
    tuple(float(x) for x in _BS_B),
    tuple(float(x - y) for x, y in zip(_BS_B, _BS_BHAT, strict=True)),
    _hermite_interp(_BS_B, 3),
    fsal=True,
    error_order=2,
)

# ---------------------------------------------------------------------------------------------------
# Dormand–Prince 5(4), FSAL; quartic dense output through y0, y1, f0, f1 and the order-5 midpoint value
_DP_A = (
    (),
    (Fraction(1, 5),),
    (Fraction(3, 40), Fraction(9, 40)),
    (Fraction(44, 45), Fraction(-56, 15), Fraction(32, 9)),
    (Fraction(19372, 6561), Fraction(-25360, 2187), Fraction(64448, 6561), Fraction(-212, 729)),
    (Fraction(9017, 3168), Fraction(-355, 33), Fraction(46732, 5247), Fraction(49, 176), Fraction(-5103, 18656)),
    (Fraction(35, 384), Fraction(0), Fraction(500, 1113), Fraction(125, 192), Fraction(-2187, 6784), Fraction(11, 84)),
)
_DP_B = _DP_A[6] + (Fraction(0),)
_DP_BHAT = (
    Fraction(5179, 57600),
    Fraction(0),
    Fraction(7571, 16695),
    Fraction(393, 640),
    Fraction(-92097, 339200),
    Fraction(187, 2100),
    Fraction(1, 40),
)
# Shampine's order-5 solution at θ = 1/2 (weights on the 7 stages)
_DP_MID = (
    Fraction(6025192743, 30085553152) / 2,
    Fraction(0),
    Fraction(51252292925, 65400821598) / 2,
    Fraction(-2691868925, 45128329728) / 2,
    Fraction(187940372067, 1594534317056) / 2,
    Fraction(-1776094331, 19743644256) / 2,
    Fraction(11237099, 235043384) / 2,
)
DOPRI5 = Tableau(
    "dopri5",
    5,
    (0.0, 0.2, 0.3, 0.8, 8 / 9, 1.0, 1.0),
    tuple(tuple(float(x) for x in row) for row in _DP_A),
    tuple(float(x) for x in _DP_B),
    tuple(float(x - y) for x, y in zip(_DP_B, _DP_BHAT, strict=True)),
    _hermite_interp(_DP_B, 6, _DP_MID),
    fsal=True,
    error_order=4,
)

# ---------------------------------------------------------------------------------------------------
# Tsitouras 5(4), FSAL; its own order-4 interpolant (b_s(θ) polynomials from the paper, expanded here)
_TS_C = (0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0)
_TS_A = (
    (),
    (0.161,),
    (-0.008480655492356989, 0.335480655492357),
    (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
    (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
    (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.02826905039406838),
    (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081, 2.324710524099774),
)
_TS_B = _TS_A[6] + (0.0,)
# error weights b − b_hat; the last one is −1/66 (sign as corrected after the paper)
_TS_E = (
    0.00178001105222577714,
    0.0008164344596567469,
    -0.007880878010261995,
    0.1447110071732629,
    -0.5823571654525552,
    0.45808210592918697,
    -1 / 66,
)


def _tsit5_interp():
    F = _F
    th = [F(0), F(1)]  # θ

    def lin(r):  # θ − r
        return [F(-r), F(1)]

    def quad(p, q):  # θ² + pθ + q
        return [F(q), F(p), F(1)]

    t2 = [F(0), F(0), F(1)]
    polys = [
        [
            F(-1.0530884977290216) * x
            for x in _pmul(_pmul(th, lin(1.3299890189751412)), quad(-1.4364028541716351, 0.7139816917074209))
        ],
        [F(0.1017) * x for x in _pmul(t2, quad(-2.1966568338249754, 1.2949852507374631))],
        [F(2.490627285651252793) * x for x in _pmul(t2, quad(-2.38535645472061657, 1.57803468208092486))],
        [F(-16.54810288924490272) * x for x in _pmul(_pmul(lin(1.21712927295533244), lin(0.61620406037800089)), t2)],
        [F(47.37952196281928122) * x for x in _pmul(_pmul(lin(1.203071208372362603), lin(0.658047292653547382)), t2)],
        [F(-34.87065786149660974) * x for x in _pmul(_pmul(lin(1.2), lin(F(2) / 3)), t2)],
        [F(2.5) * x for x in _pmul(_pmul(lin(1), lin(0.6)), t2)],
    ]
    return _poly_interp(polys)


TSIT5 = Tableau("tsit5", 5, _TS_C, _TS_A, _TS_B, _TS_E, _tsit5_interp(), fsal=True, error_order=4)

METHODS: dict[str, Tableau] = {t.name: t for t in (EULER, MIDPOINT, RK4, BOSH3, DOPRI5, TSIT5)}
FIXED_METHODS = tuple(k for k, v in METHODS.items() if not v.adaptive)
ADAPTIVE_METHODS = tuple(k for k, v in METHODS.items() if v.adaptive)
