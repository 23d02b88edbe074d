"""Case files: TOML read into validated, frozen dataclasses.

Every error is a :class:`~gridpde.errors.CaseError` whose message names the
key (dotted, e.g. ``prompts[1].cov``), the value found and what was expected.
Unknown keys are errors. Arrays are stored as read-only numpy float64 arrays.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, NoReturn, get_args

import numpy as np

from gridpde.errors import CaseError
from gridpde.heads import HEAD_ARRAYS, load_heads_npz, random_heads

Scheme = Literal["upwind", "muscl"]
Limiter = Literal["minmod", "mc", "vanleer"]
TimeStepper = Literal["euler", "ssprk2", "ssprk3"]
Method = Literal["grid", "particles"]
Integrator = Literal["euler", "rk4"]
TokenInit = Literal["quadrature", "sample"]
Quadrature = Literal["deconvolved", "midpoint"]
LossKind = Literal["mmd", "potential"]
TrainScheme = Literal["explicit", "implicit"]


@dataclass(frozen=True)
class GridSpec:
    """Uniform Cartesian box: ``lower``/``upper`` per axis, ``cells`` per axis."""

    lower: tuple[float, ...]
    upper: tuple[float, ...]
    cells: tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    """L layers of M heads. Q, K: (L, M, k, d); V: (L, M, d, d).

    ``scale_scores``: if true the score is <Qx, Ky>/sqrt(k) (B = K^T Q / sqrt(k));
    the default (false) is MODEL.md's convention, no factor.
    """

    layers: int
    heads: int
    head_dim: int
    Q: np.ndarray
    K: np.ndarray
    V: np.ndarray
    scale_scores: bool = False


@dataclass(frozen=True)
class GaussianPrompt:
    mean: np.ndarray  # (d,)
    cov: np.ndarray  # (d, d), symmetric positive definite
    kind: Literal["gaussian"] = "gaussian"


@dataclass(frozen=True)
class MixturePrompt:
    weights: np.ndarray  # (c,), positive, normalised to sum 1 when read
    means: np.ndarray  # (c, d)
    covs: np.ndarray  # (c, d, d), each SPD
    kind: Literal["mixture"] = "mixture"


@dataclass(frozen=True)
class UniformPrompt:
    lower: np.ndarray  # (d,)
    upper: np.ndarray  # (d,), upper > lower
    kind: Literal["uniform"] = "uniform"


@dataclass(frozen=True)
class TokensPrompt:
    points: np.ndarray  # (n, d)
    weights: np.ndarray  # (n,), non-negative, normalised to sum 1 when read
    kind: Literal["tokens"] = "tokens"


Prompt = GaussianPrompt | MixturePrompt | UniformPrompt | TokensPrompt


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
    quadrature: Quadrature = "deconvolved"
    # particle method
    integrator: Integrator = "rk4"
    substeps: int | None = None  # steps per layer; default 1 for euler, 4 for rk4
    tokens: int = 4096
    init: TokenInit = "quadrature"
    seed: int = 0
    adjoint_memory_mb: float = 2048.0  # forward states kept for the adjoint; beyond, recompute


@dataclass(frozen=True)
class HeadsSpec:
    """Heads given like [model]'s (inline, heads_file or init).

    Q, K: (L, M, k, d); V: (L, M, d, d).
    """

    Q: np.ndarray
    K: np.ndarray
    V: np.ndarray


@dataclass(frozen=True)
class LossSpec:
    """[loss]: MMD with a Gaussian kernel of bandwidth ``sigma``, or the
    potential U(x) = 1/2 |x - centre|^2. ``teacher``: heads whose outputs on
    the same prompts (same solver) are the targets of prompts without a
    ``target`` of their own.
    """

    kind: LossKind = "mmd"
    sigma: float = 1.0  # mmd only
    centre: np.ndarray | None = None  # (d,), potential only (read as the origin if not given)
    teacher: HeadsSpec | None = None


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


@dataclass(frozen=True)
class OutputSpec:
    path: str = "runs/result.h5"
    snapshots: int = 5
    plot: bool = True


@dataclass(frozen=True)
class Case:
    dim: int
    grid: GridSpec | None
    model: ModelSpec
    prompts: tuple[Prompt, ...]
    solver: SolverSpec = field(default_factory=SolverSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    loss: LossSpec | None = None
    train: TrainSpec | None = None
    #: per prompt, its own target measure (a prompt-kind measure) or None
    targets: tuple[Prompt | None, ...] = ()
    text: str = ""
    source: str = ""


# ----------------------------------------------------------------- reading


def load_case(path: str | Path) -> Case:
    """Read and validate the case file at ``path``.

    Relative paths inside the file (``model.heads_file``) resolve against the
    file's folder; ``output.path`` is kept as written (relative to the working
    directory).

    Raises:
        CaseError: the file is missing, unreadable, not TOML or not valid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        msg = f"{path}: case file not found"
        raise CaseError(msg) from None
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{path}: cannot read the case file ({exc})"
        raise CaseError(msg) from None
    return parse_case(text, base_dir=path.parent, source=str(path))


def parse_case(text: str, base_dir: str | Path = ".", source: str = "<string>") -> Case:
    """Validate the TOML ``text``; relative paths resolve against ``base_dir``.

    Heads are given by exactly one of: inline ``Q``, ``K``, ``V`` (nested
    lists of shapes Q, K: (L, M, k, d) and V: (L, M, d, d)), ``heads_file``
    (an .npz holding Q, K, V of those shapes) or ``init = {scale, seed}``
    (:func:`gridpde.heads.random_heads`). For convenience a head array may
    leave out a leading axis of length 1: with L == 1, Q of shape (M, k, d);
    with M == 1 (and L > 1), Q of shape (L, k, d); with L == M == 1 also
    (k, d); likewise for V. The missing axes are added back.

    The same rules give ``[loss.teacher]``'s heads, with the model's sizes.
    A prompt's ``target`` is a measure given like a prompt; with ``[loss]``
    kind = "mmd" every prompt needs one unless ``[loss.teacher]`` is given;
    kind = "potential" takes none. ``[train]`` needs ``[loss]``.

    In 1-D a gaussian ``cov`` may be a number, ``[v]`` or ``[[v]]`` (the
    variance), mixture ``covs`` a list of variances, and tokens ``points`` a
    flat list.

    Raises:
        CaseError: one line naming the dotted key, the value found and what
            was expected.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = f"{source}: invalid TOML: {exc}"
        raise CaseError(msg) from None
    _check_keys(doc, _TOP_KEYS, "")
    dim = _int(doc.get("dim", _MISSING), "dim", 1, 3)
    solver = _section(doc.get("solver", {}), "solver", _SOLVER_KEYS, SolverSpec)
    grid = None
    if "grid" in doc or solver.method == "grid":
        grid = _grid(doc.get("grid", _MISSING), dim)
    model = _model(doc.get("model", _MISSING), dim, Path(base_dir))
    prompts, targets = _prompts(doc.get("prompts", _MISSING), dim)
    loss = None
    if "loss" in doc:
        loss = _loss(doc["loss"], dim, model, Path(base_dir))
    elif "train" in doc:
        msg = "[train]: needs a [loss] table"
        raise CaseError(msg)
    _check_targets(targets, loss)
    train = _section(doc["train"], "train", _TRAIN_KEYS, TrainSpec) if "train" in doc else None
    return Case(
        dim=dim,
        grid=grid,
        model=model,
        prompts=prompts,
        solver=solver,
        output=_section(doc.get("output", {}), "output", _OUTPUT_KEYS, OutputSpec),
        loss=loss,
        train=train,
        targets=targets,
        text=text,
        source=source,
    )


# ------------------------------------------------------- generic checkers

_MISSING: Any = object()
_TOP_KEYS = ("dim", "grid", "model", "prompts", "solver", "output", "loss", "train")


def _show(value: Any, limit: int = 60) -> str:
    """A TOML-like, abbreviated rendering of ``value`` for messages."""
    if isinstance(value, np.ndarray):
        text = f"<array of shape {value.shape}>"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = '"' + value.replace('"', '\\"') + '"'
    elif isinstance(value, list):
        text = "[" + ", ".join(_show(v, limit) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{ " + ", ".join(f"{k} = {_show(v, limit)}" for k, v in value.items()) + " }"
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(key: str, value: Any, expected: str) -> NoReturn:
    if value is _MISSING:
        msg = f"{key} is missing: expected {expected}"
    else:
        msg = f"{key} = {_show(value)}: expected {expected}"
    raise CaseError(msg)


def _check_keys(table: dict, allowed: tuple[str, ...], where: str) -> None:
    for name in table:
        if name not in allowed:
            key = f"{where}.{name}" if where else name
            expected = "unknown key, expected one of: " + ", ".join(allowed)
            msg = f"{key} = {_show(table[name])}: {expected}"
            raise CaseError(msg)


def _table(value: Any, key: str) -> dict:
    return value if isinstance(value, dict) else _fail(key, value, "a table")


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _int(value: Any, key: str, lo: int, hi: int | None = None) -> int:
    n = _as_int(value)
    if n is None or n < lo or (hi is not None and n > hi):
        _fail(key, value, f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}")
    return n


def _float(value: Any, key: str, ok: Callable[[float], bool], expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(key, value, expected)
    x = float(value)
    return x if math.isfinite(x) and ok(x) else _fail(key, value, expected)


def _bool(value: Any, key: str) -> bool:
    return value if isinstance(value, bool) else _fail(key, value, "true or false")


def _str(value: Any, key: str) -> str:
    return value if isinstance(value, str) and value else _fail(key, value, "a non-empty string")


def _choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    if not (isinstance(value, str) and value in choices):
        _fail(key, value, "one of " + ", ".join(f'"{c}"' for c in choices))
    return value


def _is_numeric(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "iuf"
    if isinstance(value, list):
        return all(_is_numeric(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shape_str(shape: tuple) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _fits(found: tuple[int, ...], shape: tuple) -> bool:
    return len(found) == len(shape) and all(
        n >= 1 if isinstance(s, str) else n == s for n, s in zip(found, shape, strict=True)
    )


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr = np.array(arr, dtype=np.float64)
    arr.setflags(write=False)
    return arr


def _array(
    value: Any, key: str, shape: tuple, also: tuple[tuple, ...] = (), names: str = ""
) -> np.ndarray:
    """A finite, read-only float64 array of ``shape`` from nested lists.

    ``shape`` holds sizes, or names (str) for sizes free but >= 1. Arrays of
    a shape in ``also`` (same number of entries) are reshaped to ``shape``.
    """
    wanted = _shape_str(shape)
    if names:
        wanted = f"{names} = {wanted}"
    if also:
        wanted += " (or " + ", ".join(map(_shape_str, also)) + ")"
    if not _is_numeric(value):
        _fail(key, value, f"an array of numbers of shape {wanted}")
    try:
        arr = np.array(value, dtype=np.float64)
    except (ValueError, OverflowError):
        _fail(key, value, f"a rectangular array of numbers of shape {wanted}")
    if not any(_fits(arr.shape, s) for s in (shape, *also)):
        _fail(key, value, f"shape {wanted}, found shape {_shape_str(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        _fail(key, value, "finite numbers")
    return _frozen(arr.reshape([-1 if isinstance(s, str) else s for s in shape]))


def _spd(cov: np.ndarray, key: str, value: Any) -> np.ndarray:
    """Check that ``cov`` is symmetric (rel. 1e-12) and positive definite."""
    if np.max(np.abs(cov - cov.T)) > 1e-12 * np.max(np.abs(cov)):
        _fail(key, value, "a symmetric matrix (relative tolerance 1e-12)")
    try:
        np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        _fail(key, value, "a positive definite covariance matrix")
    return _frozen(0.5 * (cov + cov.T))


def _section(value: Any, where: str, parsers: dict[str, Callable], cls: type) -> Any:
    """An optional table whose keys map one-to-one to the fields of ``cls``."""
    table = _table(value, where)
    _check_keys(table, tuple(parsers), where)
    return cls(**{name: parsers[name](v, f"{where}.{name}") for name, v in table.items()})


# ---------------------------------------------------------------- sections


def _unit(v: Any, k: str) -> float:
    return _float(v, k, lambda x: 0 < x <= 1, "a number in (0, 1]")


def _one_of(literal: Any) -> Callable[[Any, str], str]:
    choices = get_args(literal)
    return lambda v, k: _choice(v, k, choices)


_SOLVER_KEYS: dict[str, Callable[[Any, str], Any]] = {
    "method": _one_of(Method),
    "scheme": _one_of(Scheme),
    "limiter": _one_of(Limiter),
    "time": _one_of(TimeStepper),
    "cfl": _unit,
    "mass_tol": _unit,
    "quadrature": _one_of(Quadrature),
    "integrator": _one_of(Integrator),
    "substeps": lambda v, k: _int(v, k, 1),
    "tokens": lambda v, k: _int(v, k, 1),
    "init": _one_of(TokenInit),
    "seed": lambda v, k: _int(v, k, 0),
    "adjoint_memory_mb": lambda v, k: _float(v, k, lambda x: x > 0, "a number > 0"),
}
_OUTPUT_KEYS: dict[str, Callable[[Any, str], Any]] = {
    "path": _str,
    "snapshots": lambda v, k: _int(v, k, 2),
    "plot": _bool,
}
_TRAIN_KEYS: dict[str, Callable[[Any, str], Any]] = {
    "steps": lambda v, k: _int(v, k, 0),
    "lr": lambda v, k: _float(v, k, lambda x: x > 0, "a number > 0"),
    "checkpoint_every": lambda v, k: _int(v, k, 1),
    "backtrack": _bool,
    "risk_tol": lambda v, k: _float(v, k, lambda x: x >= 0, "a number >= 0"),
    "grad_tol": lambda v, k: _float(v, k, lambda x: x >= 0, "a number >= 0"),
    "time_limit": lambda v, k: _float(v, k, lambda x: x >= 0, "a number >= 0 (seconds; 0: none)"),
    "scheme": _one_of(TrainScheme),
    "inner_steps": lambda v, k: _int(v, k, 1),
    "inner_tol": lambda v, k: _float(v, k, lambda x: 0 <= x < 1, "a number in [0, 1)"),
}
assert set(_SOLVER_KEYS) == {f.name for f in fields(SolverSpec)}
assert set(_OUTPUT_KEYS) == {f.name for f in fields(OutputSpec)}
assert set(_TRAIN_KEYS) == {f.name for f in fields(TrainSpec)}


def _grid(value: Any, dim: int) -> GridSpec:
    table = _table(value, "grid")
    _check_keys(table, ("lower", "upper", "cells"), "grid")
    lower = _array(table.get("lower", _MISSING), "grid.lower", (dim,))
    upper = _array(table.get("upper", _MISSING), "grid.upper", (dim,))
    if not np.all(upper > lower):
        expected = f"upper > lower on every axis (lower = {_show(table['lower'])})"
        _fail("grid.upper", table["upper"], expected)
    value = table.get("cells", _MISSING)
    cells = [_as_int(n) for n in value] if isinstance(value, list) else None
    if cells is None or len(cells) != dim or any(n is None or n < 2 for n in cells):
        _fail("grid.cells", value, f"integers >= 2, one per dimension (dim = {dim})")
    return GridSpec(tuple(map(float, lower)), tuple(map(float, upper)), tuple(cells))


def _model(value: Any, dim: int, base_dir: Path) -> ModelSpec:
    table = _table(value, "model")
    allowed = ("layers", "heads", "head_dim", "scale_scores", *_HEAD_SOURCES)
    _check_keys(table, allowed, "model")
    L = _int(table.get("layers", _MISSING), "model.layers", 1)
    M = _int(table.get("heads", _MISSING), "model.heads", 1)
    k = _int(table.get("head_dim", _MISSING), "model.head_dim", 1)
    scale_scores = _bool(table.get("scale_scores", False), "model.scale_scores")
    heads = _heads(table, "model", (L, M, k, dim), base_dir)
    return ModelSpec(L, M, k, heads.Q, heads.K, heads.V, scale_scores)


_HEAD_SOURCES = (*HEAD_ARRAYS, "heads_file", "init")


def _heads(table: dict, where: str, sizes: tuple[int, int, int, int], base_dir: Path) -> HeadsSpec:
    """Q, K, V of ``table`` (the keys of ``_HEAD_SOURCES``) for sizes (L, M, k, d)."""
    L, M, k, dim = sizes
    given = (["Q, K, V"] if any(n in table for n in HEAD_ARRAYS) else []) + [
        n for n in ("heads_file", "init") if n in table
    ]
    if len(given) != 1:
        msg = (
            f"{where}: expected the heads from exactly one of Q, K, V (inline), heads_file or "
            "init; " + (f"found {' and '.join(given)}" if given else "found none")
        )
        raise CaseError(msg)
    keys = {n: f"{where}.{n}" for n in HEAD_ARRAYS}
    if "heads_file" in table:
        name = _str(table["heads_file"], f"{where}.heads_file")
        try:
            arrays = load_heads_npz(base_dir / name)
        except (OSError, ValueError) as exc:
            msg = f"{where}.heads_file = {_show(name)}: cannot read Q, K, V from it ({exc})"
            raise CaseError(msg) from None
        raw = dict(zip(HEAD_ARRAYS, arrays, strict=True))
        keys = {n: f"{where}.heads_file[{n}]" for n in HEAD_ARRAYS}
    elif "init" in table:
        init = _table(table["init"], f"{where}.init")
        _check_keys(init, ("scale", "seed"), f"{where}.init")
        scale_value = init.get("scale", _MISSING)
        scale = _float(scale_value, f"{where}.init.scale", lambda x: x >= 0, "a number >= 0")
        seed = _int(init.get("seed", 0), f"{where}.init.seed", 0)
        raw = dict(zip(HEAD_ARRAYS, random_heads(L, M, k, dim, scale, seed), strict=True))
    else:
        raw = {n: table.get(n, _MISSING) for n in HEAD_ARRAYS}

    def head_array(name: str, rows: int, names: str) -> np.ndarray:
        shape = (L, M, rows, dim)
        also = [(M, rows, dim)] if L == 1 else [(L, rows, dim)] if M == 1 else []
        if L == M == 1:
            also.append((rows, dim))
        return _array(raw[name], keys[name], shape, tuple(also), names)

    return HeadsSpec(
        Q=head_array("Q", k, "(L, M, k, d)"),
        K=head_array("K", k, "(L, M, k, d)"),
        V=head_array("V", dim, "(L, M, d, d)"),
    )


# -------------------------------------------------------------------- loss


def _loss(value: Any, dim: int, model: ModelSpec, base_dir: Path) -> LossSpec:
    table = _table(value, "loss")
    _check_keys(table, ("kind", "sigma", "centre", "teacher"), "loss")
    kind = _choice(table.get("kind", "mmd"), "loss.kind", get_args(LossKind))
    only = {"sigma": "mmd", "centre": "potential", "teacher": "mmd"}
    for name, owner in only.items():
        if name in table and kind != owner:
            expected = f'no {name} with kind = "{kind}" (it is for kind = "{owner}")'
            _fail(f"loss.{name}", table[name], expected)
    if kind == "potential":
        centre = table.get("centre", [0.0] * dim)
        return LossSpec(kind=kind, centre=_array(centre, "loss.centre", (dim,)))
    sigma = _float(table.get("sigma", 1.0), "loss.sigma", lambda x: x > 0, "a number > 0")
    teacher = None
    if "teacher" in table:
        t = _table(table["teacher"], "loss.teacher")
        _check_keys(t, _HEAD_SOURCES, "loss.teacher")
        sizes = (model.layers, model.heads, model.head_dim, dim)
        teacher = _heads(t, "loss.teacher", sizes, base_dir)
    return LossSpec(kind=kind, sigma=sigma, teacher=teacher)


def _check_targets(targets: tuple[Prompt | None, ...], loss: LossSpec | None) -> None:
    """Targets need a [loss]; mmd needs one per prompt unless a teacher is given."""
    for i, target in enumerate(targets):
        key = f"prompts[{i}].target"
        if target is not None and loss is None:
            msg = f"{key}: needs a [loss] table"
            raise CaseError(msg)
        if target is not None and loss is not None and loss.kind == "potential":
            msg = f'{key}: expected no target with [loss] kind = "potential"'
            raise CaseError(msg)
        if target is None and loss is not None and loss.kind == "mmd" and loss.teacher is None:
            _fail(key, _MISSING, 'a target measure (or a [loss.teacher] table) for kind = "mmd"')


# ----------------------------------------------------------------- prompts


def _gaussian(t: dict, key: str, dim: int) -> GaussianPrompt:
    mean = _array(t.get("mean", _MISSING), f"{key}.mean", (dim,))
    cov_value = t.get("cov", _MISSING)
    cov = _array(cov_value, f"{key}.cov", (dim, dim), ((), (1,)) if dim == 1 else ())
    return GaussianPrompt(mean=mean, cov=_spd(cov, f"{key}.cov", cov_value))


def _normalised(w: np.ndarray, key: str, value: Any, ok: Callable, expected: str) -> np.ndarray:
    if not (np.all(ok(w)) and w.sum() > 0):
        _fail(key, value, expected)
    return _frozen(w / w.sum())


def _mixture(t: dict, key: str, dim: int) -> MixturePrompt:
    w_value = t.get("weights", _MISSING)
    weights = _array(w_value, f"{key}.weights", ("c",))
    weights = _normalised(weights, f"{key}.weights", w_value, lambda w: w > 0, "positive numbers")
    c = weights.size
    means = _array(t.get("means", _MISSING), f"{key}.means", (c, dim), names="(c, d)")
    covs_value = t.get("covs", _MISSING)
    also = ((c,),) if dim == 1 else ()
    covs = _array(covs_value, f"{key}.covs", (c, dim, dim), also, "(c, d, d)")
    covs = np.stack(
        [
            _spd(cov, f"{key}.covs[{j}]", covs_value[j] if isinstance(covs_value, list) else cov)
            for j, cov in enumerate(covs)
        ]
    )
    return MixturePrompt(weights=weights, means=means, covs=_frozen(covs))


def _uniform(t: dict, key: str, dim: int) -> UniformPrompt:
    lower = _array(t.get("lower", _MISSING), f"{key}.lower", (dim,))
    upper = _array(t.get("upper", _MISSING), f"{key}.upper", (dim,))
    if not np.all(upper > lower):
        expected = f"upper > lower on every axis (lower = {_show(t['lower'])})"
        _fail(f"{key}.upper", t["upper"], expected)
    return UniformPrompt(lower=lower, upper=upper)


def _tokens(t: dict, key: str, dim: int) -> TokensPrompt:
    also = (("n",),) if dim == 1 else ()
    points = _array(t.get("points", _MISSING), f"{key}.points", ("n", dim), also)
    n = points.shape[0]
    w_value = t.get("weights", _MISSING)
    if w_value is _MISSING:
        return TokensPrompt(points=points, weights=_frozen(np.full(n, 1.0 / n)))
    weights = _array(w_value, f"{key}.weights", (n,), names="(n,)")
    expected = "non-negative numbers with a positive sum"
    weights = _normalised(weights, f"{key}.weights", w_value, lambda w: w >= 0, expected)
    return TokensPrompt(points=points, weights=weights)


_PROMPTS: dict[str, tuple[Callable[[dict, str, int], Prompt], tuple[str, ...]]] = {
    "gaussian": (_gaussian, ("mean", "cov")),
    "mixture": (_mixture, ("weights", "means", "covs")),
    "uniform": (_uniform, ("lower", "upper")),
    "tokens": (_tokens, ("points", "weights")),
}


def _prompt(value: Any, key: str, dim: int, extra: tuple[str, ...] = ()) -> Prompt:
    """One measure: a table with ``kind`` and that kind's keys (and ``extra``)."""
    table = _table(value, key)
    kind = _choice(table.get("kind", _MISSING), f"{key}.kind", tuple(_PROMPTS))
    parse, keys = _PROMPTS[kind]
    _check_keys(table, ("kind", *keys, *extra), key)
    return parse(table, key, dim)


def _prompts(value: Any, dim: int) -> tuple[tuple[Prompt, ...], tuple[Prompt | None, ...]]:
    """The prompts and, per prompt, its ``target`` measure or None."""
    if not (isinstance(value, list) and value):
        _fail("prompts", value, "at least one [[prompts]] table")
    prompts, targets = [], []
    for i, item in enumerate(value):
        key = f"prompts[{i}]"
        prompts.append(_prompt(item, key, dim, extra=("target",)))
        target = item.get("target")
        targets.append(None if target is None else _prompt(target, f"{key}.target", dim))
    return tuple(prompts), tuple(targets)
