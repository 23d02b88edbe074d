"""What a case asks for, as frozen dataclasses: no TOML here.

The case-file reader (:mod:`gridpde.casefile`) builds these from TOML text
with messages that name the key; Python code can build them directly
(:meth:`Case.build`), with the same checks. Numerics import this module,
never the reader.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal, NoReturn, get_args

import numpy as np

from gridpde.errors import CaseError
from gridpde.heads import Heads
from gridpde.prompts import Prompt, Queries, TokenInit

Scheme = Literal["upwind", "muscl"]
Limiter = Literal["minmod", "mc", "vanleer"]
TimeStepper = Literal["euler", "ssprk2", "ssprk3"]
Method = Literal["grid", "particles"]
Integrator = Literal["euler", "rk4"]
Quadrature = Literal["deconvolved", "midpoint"]
Attention = Literal["exact", "table", "auto"]
LossKind = Literal["mmd", "potential", "readout", "flowmap"]
#: losses of the output measure, and losses of tracked points (queries, or tokens with labels)
MEASURE_KINDS = ("mmd", "potential")
POINT_KINDS = ("readout", "flowmap")
TrainScheme = Literal["explicit", "implicit"]



# ------------------------------------------------------- field checks
# Shared with the case-file reader: every message names the key, the value
# found and what was expected.


MISSING: Any = object()


def show(value: Any, limit: int = 60) -> str:
    """A TOML-like, abbreviated rendering of ``value`` for messages."""
    if isinstance(value, np.ndarray):
        text = f"<array of shape {value.shape}>"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = '"' + value.replace('"', '\\"') + '"'
    elif isinstance(value, list):
        text = "[" + ", ".join(show(v, limit) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{ " + ", ".join(f"{k} = {show(v, limit)}" for k, v in value.items()) + " }"
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fail(key: str, value: Any, expected: str) -> NoReturn:
    if value is MISSING:
        msg = f"{key} is missing: expected {expected}"
    else:
        msg = f"{key} = {show(value)}: expected {expected}"
    raise CaseError(msg)


def check_keys(table: dict, allowed: tuple[str, ...], where: str) -> None:
    for name in table:
        if name not in allowed:
            shown = name if len(name) <= 60 else name[:57] + "..."
            key = f"{where}.{shown}" if where else shown
            expected = "unknown key, expected one of: " + ", ".join(allowed)
            msg = f"{key} = {show(table[name])}: {expected}"
            raise CaseError(msg)


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def check_int(value: Any, key: str, lo: int, hi: int | None = None) -> int:
    n = as_int(value)
    if n is None or n < lo or (hi is not None and n > hi):
        fail(key, value, f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}")
    return n


def check_float(value: Any, key: str, ok: Callable[[float], bool], expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(key, value, expected)
    x = float(value)
    return x if math.isfinite(x) and ok(x) else fail(key, value, expected)


def check_bool(value: Any, key: str) -> bool:
    return value if isinstance(value, bool) else fail(key, value, "true or false")


def check_str(value: Any, key: str) -> str:
    return value if isinstance(value, str) and value else fail(key, value, "a non-empty string")


def check_choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    if not (isinstance(value, str) and value in choices):
        fail(key, value, "one of " + ", ".join(f'"{c}"' for c in choices))
    return value


def unit(v: Any, k: str) -> float:
    return check_float(v, k, lambda x: 0 < x <= 1, "a number in (0, 1]")


def one_of(literal: Any) -> Callable[[Any, str], str]:
    choices = get_args(literal)
    return lambda v, k: check_choice(v, k, choices)


SOLVER_KEYS: dict[str, Callable[[Any, str], Any]] = {
    "method": one_of(Method),
    "scheme": one_of(Scheme),
    "limiter": one_of(Limiter),
    "time": one_of(TimeStepper),
    "cfl": lambda v, k: check_float(v, k, lambda x: 1e-6 <= x <= 1, "a number in [1e-6, 1] (smaller cannot make progress)"),
    "max_steps": lambda v, k: check_int(v, k, 1),
    "mass_tol": unit,
    "quadrature": one_of(Quadrature),
    "attention": one_of(Attention),
    "attention_tol": lambda v, k: check_float(v, k, lambda x: 1e-14 <= x <= 1e-2, "a number in [1e-14, 1e-2]"),
    "integrator": one_of(Integrator),
    "substeps": lambda v, k: check_int(v, k, 1),
    "tokens": lambda v, k: check_int(v, k, 1),
    "init": one_of(TokenInit),
    "quadrature_sigmas": lambda v, k: check_float(v, k, lambda x: 1 <= x <= 40, "a number in [1, 40]"),
    "seed": lambda v, k: check_int(v, k, 0),
    "adjoint_memory_mb": lambda v, k: check_float(v, k, lambda x: x > 0, "a number > 0"),
}
OUTPUT_KEYS: dict[str, Callable[[Any, str], Any]] = {
    "path": check_str,
    "snapshots": lambda v, k: check_int(v, k, 2),
    "plot": check_bool,
}
TRAIN_KEYS: dict[str, Callable[[Any, str], Any]] = {
    "steps": lambda v, k: check_int(v, k, 0),
    "lr": lambda v, k: check_float(v, k, lambda x: 0 < x <= 1e100, "a number in (0, 1e100]"),
    "checkpoint_every": lambda v, k: check_int(v, k, 1),
    "backtrack": check_bool,
    "risk_tol": lambda v, k: check_float(v, k, lambda x: x >= 0, "a number >= 0"),
    "grad_tol": lambda v, k: check_float(v, k, lambda x: x >= 0, "a number >= 0"),
    "time_limit": lambda v, k: check_float(v, k, lambda x: x >= 0, "a number >= 0 (seconds; 0: none)"),
    "scheme": one_of(TrainScheme),
    "inner_steps": lambda v, k: check_int(v, k, 1),
    "inner_tol": lambda v, k: check_float(v, k, lambda x: 0 <= x < 1, "a number in [0, 1)"),
}




def _check_fields(obj: Any, where: str, checks: dict[str, Callable[[Any, str], Any]]) -> None:
    """Run each field of a frozen dataclass through its check (None: a default left unset)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value is None and f.default is None:
            continue
        object.__setattr__(obj, f.name, checks[f.name](value, f"{where}.{f.name}"))


@dataclass(frozen=True)
class GridSpec:
    """Uniform Cartesian box: ``lower``/``upper`` per axis, ``cells`` per axis."""

    lower: tuple[float, ...]
    upper: tuple[float, ...]
    cells: tuple[int, ...]

    def __post_init__(self):
        lower = tuple(check_float(x, "grid.lower", lambda _: True, "finite numbers") for x in self.lower)
        upper = tuple(check_float(x, "grid.upper", lambda _: True, "finite numbers") for x in self.upper)
        cells = tuple(check_int(n, "grid.cells", 2) for n in self.cells)
        if not 1 <= len(cells) <= 3 or not len(lower) == len(upper) == len(cells):
            fail("grid", self, "lower, upper and cells of one length 1, 2 or 3")
        if not all(b > a for a, b in zip(lower, upper)):
            fail("grid.upper", list(upper), f"upper > lower on every axis (lower = {list(lower)})")
        object.__setattr__(self, "lower", lower)
        object.__setattr__(self, "upper", upper)
        object.__setattr__(self, "cells", cells)


@dataclass(frozen=True)
class SolverSpec:
    """How to solve. Grid keys first, then the particle method's keys.

    ``cfl`` in (0, 1] is the target Courant number sum_a max|u_a| dt / dx_a;
    steps are refined so that it never exceeds the scheme's positivity limit.
    ``mass_tol``: the run stops (exit 1) when the mass that left the box
    exceeds this fraction of the initial mass.
    """

    method: Method = "grid"
    scheme: Scheme = "muscl"
    limiter: Limiter = "vanleer"
    time: TimeStepper = "ssprk3"
    cfl: float = 0.4
    mass_tol: float = 1e-6
    max_steps: int = 100_000  # depth steps per layer interval (grid) before the run stops (exit 1)
    quadrature: Quadrature = "deconvolved"
    attention: Attention = "auto"  # exact sums, or the tilted-mean table (auto: by size, see the README)
    attention_tol: float = 1e-10  # the table's relative error bound on the velocity
    # particle method
    integrator: Integrator = "rk4"
    substeps: int | None = None  # steps per layer; default 1 for euler, 4 for rk4
    tokens: int = 4096
    init: TokenInit = "quadrature"
    quadrature_sigmas: float = 8.0  # a Gaussian's quadrature-token box: mean +- this many sd per component
    seed: int = 0
    adjoint_memory_mb: float = 2048.0  # forward states kept for the adjoint; beyond, recompute

    def __post_init__(self):
        _check_fields(self, "solver", SOLVER_KEYS)


@dataclass(frozen=True)
class LossSpec:
    """[loss]: F = sum_k weights_k F_k over one or more kinds (docs/model.md section 3).

    - ``mmd``: MMD with a Gaussian kernel of bandwidth ``sigma`` to a target
      measure, or to the output of ``teacher`` heads on the same prompts
      (same solver) for prompts without a ``target`` of their own;
    - ``potential``: U(x) = 1/2 |x - centre|^2 integrated against the output;
    - ``readout``: the weighted mean over a prompt's queries of
      |P X_q(1) - y_q|^2, P selecting the coordinates ``coords`` (default:
      the last one);
    - ``flowmap``: int |X_1(x) - T(x)|^2 dmu_0(x) for the affine map
      T(x) = map_A x + map_b, or T tabulated at ``map_points`` (:meth:`target`)
      (particles: every token with its label; grid:
      mass-free query tokens at a tensor Gauss rule of mu_0, ``flowmap_points``
      per axis).

    ``kind`` is one name or a tuple of names; ``weights`` (default: ones)
    gives each its factor.
    """

    kind: LossKind | tuple[LossKind, ...] = "mmd"
    sigma: float = 1.0  # mmd only
    centre: np.ndarray | None = None  # (d,), potential only (read as the origin if not given)
    teacher: Heads | None = None
    weights: tuple[float, ...] | None = None
    coords: tuple[int, ...] | None = None  # readout: 0-based coordinates (default: the last)
    map_A: np.ndarray | None = None  # flowmap: T(x) = map_A x + map_b
    map_b: np.ndarray | None = None
    map_points: np.ndarray | None = None  # or tabulated: T(map_points[i]) = map_values[i], (n, d) each
    map_values: np.ndarray | None = None
    flowmap_points: int = 8  # flowmap on the grid: Gauss points per axis (and per mixture component)

    def __post_init__(self):
        kinds = (self.kind,) if isinstance(self.kind, str) else tuple(self.kind)
        if not kinds:
            fail("loss.kind", list(kinds), "one kind or a list of kinds")
        for k in kinds:
            check_choice(k, "loss.kind", get_args(LossKind))
        if len(set(kinds)) != len(kinds):
            fail("loss.kind", list(kinds), "each kind at most once")
        object.__setattr__(self, "kind", kinds[0] if len(kinds) == 1 else kinds)
        check_float(self.sigma, "loss.sigma", lambda x: x > 0, "a number > 0")
        if self.weights is not None:
            weights = tuple(check_float(w, "loss.weights", lambda x: x >= 0, "numbers >= 0")
                            for w in np.atleast_1d(self.weights))
            if len(weights) != len(kinds):
                fail("loss.weights", list(weights), f"one number >= 0 per kind ({len(kinds)})")
            object.__setattr__(self, "weights", weights)
        if "mmd" not in kinds and self.teacher is not None:
            fail("loss.teacher", self.teacher, 'no teacher without kind "mmd" (it gives the MMD targets)')
        if self.centre is not None:
            centre = np.array(self.centre, dtype=np.float64)
            if centre.ndim != 1 or not np.all(np.isfinite(centre)):
                fail("loss.centre", self.centre, "finite numbers, one per dimension")
            centre.setflags(write=False)
            object.__setattr__(self, "centre", centre)
        if self.teacher is not None and not isinstance(self.teacher, Heads):
            fail("loss.teacher", self.teacher, "Heads")
        if self.coords is not None:
            coords = tuple(check_int(c, "loss.coords", 0, 2) for c in np.atleast_1d(self.coords).tolist())
            if not coords or len(set(coords)) != len(coords):
                fail("loss.coords", list(coords), "distinct coordinate indices 0, 1 or 2")
            object.__setattr__(self, "coords", coords)
        for name in ("map_A", "map_b", "map_points", "map_values"):
            value = getattr(self, name)
            if value is not None:
                arr = np.array(value, dtype=np.float64)
                if not np.all(np.isfinite(arr)):
                    fail(f"loss.{name}", value, "finite numbers")
                arr.setflags(write=False)
                object.__setattr__(self, name, arr)
        check_int(self.flowmap_points, "loss.flowmap_points", 1, 64)
        tabulated = self.map_points is not None or self.map_values is not None
        if tabulated and (self.map_A is not None or self.map_b is not None):
            fail("loss.map", MISSING, "either A and b (affine) or points and values (tabulated), not both")
        if tabulated and (self.map_points is None or self.map_values is None
                          or self.map_points.ndim != 2 or self.map_values.shape != self.map_points.shape):
            fail("loss.map.values", self.map_values, "points and values of one shape (n, d)")
        if "flowmap" in kinds and self.map_A is None and self.map_b is None and not tabulated:
            fail("loss.map", MISSING, "the target map { A = [[...]], b = [...] } for kind \"flowmap\"")

    @property
    def kinds(self) -> tuple[str, ...]:
        return (self.kind,) if isinstance(self.kind, str) else tuple(self.kind)

    @property
    def factors(self) -> tuple[float, ...]:
        """The weight of each kind, in the order of :attr:`kinds`."""
        return self.weights if self.weights is not None else (1.0,) * len(self.kinds)

    def readout_coords(self, dim: int) -> tuple[int, ...]:
        """The coordinates the readout compares with the labels (default: the last)."""
        return self.coords if self.coords is not None else (dim - 1,)

    def target(self, X: np.ndarray) -> np.ndarray:
        """T(X) for points X (n, d): affine, or the table interpolated piecewise linearly (on the Delaunay
        triangulation of its points for d >= 2), its nearest value outside the table's hull."""
        X = np.asarray(X, dtype=np.float64)
        if self.map_points is None:
            A, b = self.target_map(X.shape[1])
            return X @ A.T + b
        P, F = self.map_points, self.map_values
        if P.shape[1] == 1:
            order = np.argsort(P[:, 0])
            return np.interp(X[:, 0], P[order, 0], F[order, 0])[:, None]
        from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator

        out = LinearNDInterpolator(P, F)(X)
        outside = np.any(np.isnan(out), axis=1)
        if outside.any():
            out[outside] = NearestNDInterpolator(P, F)(X[outside])
        return out

    def target_map(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(A (d, d), b (d,)) of the flowmap's T(x) = A x + b (identity and zero where not given)."""
        A = np.eye(dim) if self.map_A is None else self.map_A
        b = np.zeros(dim) if self.map_b is None else self.map_b
        return A, b


@dataclass(frozen=True)
class TrainSpec:
    """[train]: the conditional Wasserstein gradient flow of the heads.

    ``lr`` is the time step in the mean-field scaling: explicit Euler
    theta -= lr * L * M * dR/dtheta, or (``scheme = "implicit"``) implicit
    Euler, the proximal (JKO) step solved by at most ``inner_steps`` L-BFGS
    iterations until the gradient of the proximal objective is below
    ``inner_tol`` times the gradient at the step's start.
    Stops after ``steps`` steps, or when the risk <= ``risk_tol``, or the
    gradient norm <= ``grad_tol``, or after ``time_limit`` seconds (0: none).
    ``backtrack``: halve an explicit step (up to 20 times) while the risk would rise.
    """

    steps: int = 100
    lr: float = 0.1
    scheme: str = "explicit"
    inner_steps: int = 50
    inner_tol: float = 1e-6
    checkpoint_every: int = 10
    backtrack: bool = True
    risk_tol: float = 0.0
    grad_tol: float = 0.0
    time_limit: float = 0.0

    def __post_init__(self):
        _check_fields(self, "train", TRAIN_KEYS)


@dataclass(frozen=True)
class OutputSpec:
    path: str = "runs/result.h5"
    snapshots: int = 5
    plot: bool = True

    def __post_init__(self):
        _check_fields(self, "output", OUTPUT_KEYS)


def velocity_scale(case: Case) -> float:
    """The factor on every head's V in the dynamics: horizon T, times M for aggregate = "sum"."""
    return case.horizon * (case.heads.width if case.aggregate == "sum" else 1)


@dataclass(frozen=True)
class Case:
    """A validated case: what to compute (see the README's case-file section).

    Build one from a case file (:func:`gridpde.casefile.load_case`), from
    TOML text (:func:`gridpde.casefile.parse_case`) or from Python objects
    with :meth:`build`, which checks the parts against each other as the
    reader does.
    """

    dim: int
    grid: GridSpec | None
    heads: Heads
    prompts: tuple[Prompt, ...]
    solver: SolverSpec = field(default_factory=SolverSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    loss: LossSpec | None = None
    train: TrainSpec | None = None
    #: per prompt, its own target measure (a prompt-kind measure) or None
    targets: tuple[Prompt | None, ...] = ()
    #: per prompt, its query tokens or None
    queries: tuple[Queries | None, ...] = ()
    #: [model] horizon T: depth s in [0, 1] runs the dynamics for time T (the velocity times T)
    horizon: float = 1.0
    #: [model] aggregate: "mean" over the M heads of a layer (the mean-field scaling) or "sum" (M times it)
    aggregate: str = "mean"
    text: str = ""
    source: str = ""

    def __post_init__(self):
        dim = check_int(self.dim, "dim", 1, 3)
        check_float(self.horizon, "model.horizon", lambda x: 0 < x <= 1e6, "a number in (0, 1e6]")
        check_choice(self.aggregate, "model.aggregate", ("mean", "sum"))
        if not isinstance(self.heads, Heads):
            fail("model", self.heads, "Heads (Q, K, V)")
        if self.heads.dim != dim:
            fail("model", self.heads, f"heads for {dim}-D tokens, found d = {self.heads.dim}")
        prompts = tuple(self.prompts)
        if not prompts:
            fail("prompts", prompts, "at least one prompt")
        targets = tuple(self.targets) or (None,) * len(prompts)
        if len(targets) != len(prompts):
            fail("targets", targets, f"one entry (a measure or None) per prompt ({len(prompts)})")
        queries = tuple(self.queries) or (None,) * len(prompts)
        if len(queries) != len(prompts):
            fail("queries", queries, f"one entry (Queries or None) per prompt ({len(prompts)})")
        for i, q in enumerate(queries):
            if q is not None and (not isinstance(q, Queries) or q.dim != dim):
                fail(f"prompts[{i}].queries", q, f"Queries of {dim}-D points")
        for i, p in enumerate((*prompts, *targets)):
            key = f"prompts[{i}]" if i < len(prompts) else f"prompts[{i - len(prompts)}].target"
            if p is not None and getattr(p, "dim", None) != dim:
                fail(key, p, f"a {dim}-D prompt (GaussianPrompt, MixturePrompt, UniformPrompt, TokensPrompt or RegressionPrompt)")
        if self.solver.method == "grid" and self.grid is None:
            raise CaseError("[grid]: required for the grid method (lower, upper, cells)")
        if self.grid is not None and len(self.grid.cells) != dim:
            fail("grid.cells", list(self.grid.cells), f"integers >= 2, one per dimension (dim = {dim})")
        loss = self.loss
        if loss is not None and loss.teacher is not None:
            # the teacher only makes the target measures: any layers, heads and head_dim will do
            t, h = loss.teacher, self.heads
            if t.dim != dim or t.scale_scores != h.scale_scores:
                fail("loss.teacher", t, f"heads for {dim}-D tokens with scale_scores = "
                     f"{show(h.scale_scores)} like the model's (any layers, heads, head_dim)")
        if loss is not None and loss.centre is not None and loss.centre.shape != (dim,):
            fail("loss.centre", loss.centre, f"({dim},)")
        if loss is not None:
            check_point_losses(loss, dim, queries)
        if self.train is not None and loss is None:
            raise CaseError("[train]: needs a [loss] table")
        check_targets(targets, loss)
        object.__setattr__(self, "prompts", prompts)
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "queries", queries)


def check_point_losses(loss: LossSpec, dim: int, queries: tuple[Queries | None, ...]) -> None:
    """readout needs labelled queries on every prompt, of as many columns as coords; flowmap a (d, d) map."""
    if "readout" in loss.kinds:
        coords = loss.readout_coords(dim)
        if max(coords) >= dim:
            fail("loss.coords", list(coords), f"coordinate indices below dim = {dim}")
        for i, q in enumerate(queries):
            key = f"prompts[{i}].queries"
            if q is None or q.labels is None:
                fail(f"{key}.labels", MISSING, 'labelled queries on every prompt for [loss] kind "readout"')
            if q.labels.shape[1] != len(coords):
                fail(f"{key}.labels", q.labels, f"{len(coords)} label column(s), one per loss.coords entry "
                     f"{list(coords)}")
    if "flowmap" in loss.kinds and loss.map_points is not None:
        if loss.map_points.shape[1] != dim or loss.map_points.shape[0] < dim + 1:
            fail("loss.map.points", loss.map_points, f"at least {dim + 1} points of dimension {dim}")
    elif "flowmap" in loss.kinds:
        A, b = loss.target_map(dim)
        if A.shape != (dim, dim):
            fail("loss.map.A", A, f"a ({dim}, {dim}) matrix")
        if b.shape != (dim,):
            fail("loss.map.b", b, f"({dim},)")


def check_targets(targets: tuple[Prompt | None, ...], loss: LossSpec | None) -> None:
    """Targets need a [loss] of kind "mmd"; mmd needs one per prompt unless a teacher is given."""
    for i, target in enumerate(targets):
        key = f"prompts[{i}].target"
        if target is not None and loss is None:
            msg = f"{key}: needs a [loss] table"
            raise CaseError(msg)
        if target is not None and loss is not None and "mmd" not in loss.kinds:
            msg = f'{key}: expected no target without [loss] kind "mmd" (a target is what the MMD compares with)'
            raise CaseError(msg)
        if target is None and loss is not None and "mmd" in loss.kinds and loss.teacher is None:
            fail(key, MISSING, 'a target measure (or a [loss.teacher] table) for kind = "mmd"')


