"""Case files: TOML read into the validated, frozen dataclasses of :mod:`gridpde.spec`.

Every error is a :class:`~gridpde.errors.CaseError` whose message names the
key (dotted, e.g. ``prompts[1].cov``), the value found and what was expected.
Unknown keys are errors. Arrays are stored as read-only numpy float64 arrays.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, get_args

import numpy as np

from gridpde.errors import CaseError
from gridpde.heads import HEAD_ARRAYS, Heads, load_heads_npz
from gridpde.icl import Features, ICLSpec, regression_prompts
from gridpde.prompts import (
    GaussianPrompt,
    MixturePrompt,
    Prompt,
    Queries,
    TokensPrompt,
    UniformPrompt,
    normalised_weights,
    spd_problem,
)
from gridpde.spec import (
    MISSING,
    OUTPUT_KEYS,
    SOLVER_KEYS,
    TRAIN_KEYS,
    Case,
    GridSpec,
    LossKind,
    LossSpec,
    OutputSpec,
    SolverSpec,
    TrainSpec,
    as_int,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_keys,
    check_str,
    check_point_losses,
    check_targets,
    fail,
    show,
)

_TOP_KEYS = ("dim", "grid", "model", "prompts", "icl", "solver", "output", "loss", "train")

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
    (:meth:`gridpde.heads.Heads.random`). For convenience a head array may
    leave out a leading axis of length 1: with L == 1, Q of shape (M, k, d);
    with M == 1 (and L > 1), Q of shape (L, k, d); with L == M == 1 also
    (k, d); likewise for V. The missing axes are added back.

    The same rules give ``[loss.teacher]``'s heads, with the model's sizes
    unless the table gives its own ``layers``, ``heads`` or ``head_dim``
    (the teacher only makes the targets, so it may be wider, narrower,
    deeper or shallower than the model; d and scale_scores are the model's).
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
        msg = f"{source}: invalid TOML: {show(str(exc), 200)}"
        raise CaseError(msg) from None
    except RecursionError:
        raise CaseError(f"{source}: invalid TOML: arrays or tables nested too deeply") from None
    check_keys(doc, _TOP_KEYS, "")
    dim = check_int(doc.get("dim", MISSING), "dim", 1, 3)
    solver = _section(doc.get("solver", {}), "solver", SOLVER_KEYS, SolverSpec)
    grid = None
    if "grid" in doc or solver.method == "grid":
        grid = _grid(doc.get("grid", MISSING), dim)
    heads = _model(doc.get("model", MISSING), dim, Path(base_dir))
    model = doc["model"]
    horizon = check_float(model.get("horizon", 1.0), "model.horizon", lambda x: 0 < x <= 1e6, "a number in (0, 1e6]")
    aggregate = check_choice(model.get("aggregate", "mean"), "model.aggregate", ("mean", "sum"))
    if "icl" in doc:
        if "prompts" in doc:
            raise CaseError("[icl] and [[prompts]]: give one of them (the [icl] table generates the prompts)")
        prompts, queries = _icl(doc["icl"], dim)
        targets = (None,) * len(prompts)
    else:
        prompts, targets, queries = _prompts(doc.get("prompts", MISSING), dim)
    loss = None
    if "loss" in doc:
        loss = _loss(doc["loss"], dim, heads, Path(base_dir))
    elif "train" in doc:
        msg = "[train]: needs a [loss] table"
        raise CaseError(msg)
    check_targets(targets, loss)
    if loss is not None:
        check_point_losses(loss, dim, queries)
    train = _section(doc["train"], "train", TRAIN_KEYS, TrainSpec) if "train" in doc else None
    return Case(
        dim=dim,
        grid=grid,
        heads=heads,
        prompts=prompts,
        solver=solver,
        output=_section(doc.get("output", {}), "output", OUTPUT_KEYS, OutputSpec),
        loss=loss,
        train=train,
        targets=targets,
        queries=queries,
        horizon=horizon,
        aggregate=aggregate,
        text=text,
        source=source,
    )


def _table(value: Any, key: str) -> dict:
    return value if isinstance(value, dict) else fail(key, value, "a table")


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
        fail(key, value, f"an array of numbers of shape {wanted}")
    try:
        arr = np.array(value, dtype=np.float64)
    except (ValueError, OverflowError):
        fail(key, value, f"a rectangular array of numbers of shape {wanted}")
    if not any(_fits(arr.shape, s) for s in (shape, *also)):
        fail(key, value, f"shape {wanted}, found shape {_shape_str(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        fail(key, value, "finite numbers")
    return _frozen(arr.reshape([-1 if isinstance(s, str) else s for s in shape]))


def _spd(cov: np.ndarray, key: str, value: Any) -> np.ndarray:
    """Check that ``cov`` is symmetric (rel. 1e-12) and positive definite."""
    if problem := spd_problem(cov):
        fail(key, value, problem)
    return _frozen(0.5 * (cov + cov.T))


def _section(value: Any, where: str, parsers: dict[str, Callable], cls: type) -> Any:
    """An optional table whose keys map one-to-one to the fields of ``cls``."""
    table = _table(value, where)
    check_keys(table, tuple(parsers), where)
    return cls(**{name: parsers[name](v, f"{where}.{name}") for name, v in table.items()})


# ---------------------------------------------------------------- sections


def _grid(value: Any, dim: int) -> GridSpec:
    table = _table(value, "grid")
    check_keys(table, ("lower", "upper", "cells"), "grid")
    lower = _array(table.get("lower", MISSING), "grid.lower", (dim,))
    upper = _array(table.get("upper", MISSING), "grid.upper", (dim,))
    if not np.all(upper > lower):
        expected = f"upper > lower on every axis (lower = {show(table['lower'])})"
        fail("grid.upper", table["upper"], expected)
    value = table.get("cells", MISSING)
    cells = [as_int(n) for n in value] if isinstance(value, list) else None
    if cells is None or len(cells) != dim or any(n is None or n < 2 for n in cells):
        fail("grid.cells", value, f"integers >= 2, one per dimension (dim = {dim})")
    return GridSpec(tuple(map(float, lower)), tuple(map(float, upper)), tuple(cells))


def _model(value: Any, dim: int, base_dir: Path) -> Heads:
    table = _table(value, "model")
    allowed = ("layers", "heads", "head_dim", "scale_scores", "horizon", "aggregate", *_HEAD_SOURCES)
    check_keys(table, allowed, "model")
    L = check_int(table.get("layers", MISSING), "model.layers", 1)
    M = check_int(table.get("heads", MISSING), "model.heads", 1)
    k = check_int(table.get("head_dim", MISSING), "model.head_dim", 1)
    scale_scores = check_bool(table.get("scale_scores", False), "model.scale_scores")
    return _heads(table, "model", (L, M, k, dim), base_dir, scale_scores)


_HEAD_SOURCES = (*HEAD_ARRAYS, "heads_file", "init")
#: the most head parameters a case may ask for (800 MB of float64)
MAX_HEAD_ENTRIES = 10**8


def _heads(table: dict, where: str, sizes: tuple[int, int, int, int], base_dir: Path,
           scale_scores: bool) -> Heads:
    """Q, K, V of ``table`` (the keys of ``_HEAD_SOURCES``) for sizes (L, M, k, d)."""
    L, M, k, dim = sizes
    entries = L * M * (2 * k * dim + dim * dim)
    if entries > MAX_HEAD_ENTRIES:  # checked before any array is made (layers = 1e9 hung, 2**62 crashed)
        raise CaseError(f"{where}: layers x heads x head_dim = {L} x {M} x {k} gives {entries:.3g} head entries; "
                        f"at most {MAX_HEAD_ENTRIES:.0e} are allowed")
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
        name = check_str(table["heads_file"], f"{where}.heads_file")
        try:
            arrays = load_heads_npz(base_dir / name)
        except (OSError, ValueError) as exc:
            msg = f"{where}.heads_file = {show(name)}: cannot read Q, K, V from it ({exc})"
            raise CaseError(msg) from None
        raw = dict(zip(HEAD_ARRAYS, arrays, strict=True))
        keys = {n: f"{where}.heads_file[{n}]" for n in HEAD_ARRAYS}
    elif "init" in table:
        init = _table(table["init"], f"{where}.init")
        check_keys(init, ("scale", "seed"), f"{where}.init")
        scale_value = init.get("scale", MISSING)
        scale = check_float(scale_value, f"{where}.init.scale", lambda x: x >= 0, "a number >= 0")
        seed = check_int(init.get("seed", 0), f"{where}.init.seed", 0)
        raw = Heads.random(L, M, k, dim, scale, seed).arrays()
    else:
        raw = {n: table.get(n, MISSING) for n in HEAD_ARRAYS}

    def head_array(name: str, rows: int, names: str) -> np.ndarray:
        shape = (L, M, rows, dim)
        also = [(M, rows, dim)] if L == 1 else [(L, rows, dim)] if M == 1 else []
        if L == M == 1:
            also.append((rows, dim))
        return _array(raw[name], keys[name], shape, tuple(also), names)

    return Heads(
        Q=head_array("Q", k, "(L, M, k, d)"),
        K=head_array("K", k, "(L, M, k, d)"),
        V=head_array("V", dim, "(L, M, d, d)"),
        scale_scores=scale_scores,
    )


# -------------------------------------------------------------------- loss


_LOSS_OWNERS = {"sigma": ("mmd",), "teacher": ("mmd",), "centre": ("potential",), "coords": ("readout",),
                "map": ("flowmap",), "flowmap_points": ("flowmap",)}


def _loss(value: Any, dim: int, model: Heads, base_dir: Path) -> LossSpec:
    table = _table(value, "loss")
    check_keys(table, ("kind", "weights", *_LOSS_OWNERS), "loss")
    kind_value = table.get("kind", "mmd")
    kinds = kind_value if isinstance(kind_value, list) and kind_value else [kind_value]
    for k in kinds:
        check_choice(k, "loss.kind", get_args(LossKind))
    if len(set(kinds)) != len(kinds):
        fail("loss.kind", kind_value, "each kind at most once")
    for name, owners in _LOSS_OWNERS.items():
        if name in table and not set(owners) & set(kinds):
            expected = f'no {name} without kind "{owners[0]}" (it is for kind = "{owners[0]}")'
            fail(f"loss.{name}", table[name], expected)
    spec: dict[str, Any] = {"kind": kinds[0] if len(kinds) == 1 else tuple(kinds)}
    if "weights" in table:
        w = _array(table["weights"], "loss.weights", (len(kinds),), names="(one per kind)")
        if not np.all(w >= 0):
            fail("loss.weights", table["weights"], "numbers >= 0")
        spec["weights"] = tuple(w.tolist())
    if "potential" in kinds:
        spec["centre"] = _array(table.get("centre", [0.0] * dim), "loss.centre", (dim,))
    if "mmd" in kinds:
        spec["sigma"] = check_float(table.get("sigma", 1.0), "loss.sigma", lambda x: x > 0, "a number > 0")
    if "teacher" in table:
        t = _table(table["teacher"], "loss.teacher")
        check_keys(t, ("layers", "heads", "head_dim", *_HEAD_SOURCES), "loss.teacher")
        # the teacher only makes the targets: its own shape (default: the model's)
        sizes = (check_int(t.get("layers", model.layers), "loss.teacher.layers", 1),
                 check_int(t.get("heads", model.width), "loss.teacher.heads", 1),
                 check_int(t.get("head_dim", model.head_dim), "loss.teacher.head_dim", 1), dim)
        t = {n: v for n, v in t.items() if n not in ("layers", "heads", "head_dim")}
        spec["teacher"] = _heads(t, "loss.teacher", sizes, base_dir, model.scale_scores)
    if "coords" in table:
        coords = table["coords"]
        coords = coords if isinstance(coords, list) else [coords]
        if not coords or len(set(map(str, coords))) != len(coords):
            fail("loss.coords", table["coords"], f"distinct coordinate indices from 0 to {dim - 1}")
        spec["coords"] = tuple(check_int(c, "loss.coords", 0, dim - 1) for c in coords)
    if "flowmap" in kinds:
        m = _table(table.get("map", MISSING), "loss.map")
        check_keys(m, ("A", "b", "points", "values"), "loss.map")
        if "points" in m or "values" in m:
            if "A" in m or "b" in m:
                fail("loss.map", m, "either A and b (affine) or points and values (tabulated), not both")
            also = (("n",),) if dim == 1 else ()
            points = _array(m.get("points", MISSING), "loss.map.points", ("n", dim), also, "(n, d)")
            spec["map_points"] = points
            spec["map_values"] = _array(m.get("values", MISSING), "loss.map.values", points.shape,
                                        ((points.shape[0],),) if dim == 1 else (), "(n, d), like points")
        else:
            spec["map_A"] = _array(m.get("A", np.eye(dim).tolist()), "loss.map.A", (dim, dim),
                                   ((),) if dim == 1 else ())
            spec["map_b"] = _array(m.get("b", [0.0] * dim), "loss.map.b", (dim,))
        spec["flowmap_points"] = check_int(table.get("flowmap_points", 8), "loss.flowmap_points", 1, 64)
    return LossSpec(**spec)


def _icl(value: Any, dim: int) -> tuple[tuple[Prompt, ...], tuple[Queries, ...]]:
    """The prompts and queries of in-context regression (:mod:`gridpde.icl`)."""
    t = _table(value, "icl")
    check_keys(t, tuple(f.name for f in fields(ICLSpec)), "icl")
    if dim not in (2, 3):
        fail("dim", dim, "2 (one feature and the label) or 3 (two features) for [icl]")
    spec = {}
    for name in ("prompts", "queries"):
        spec[name] = check_int(t.get(name, getattr(ICLSpec, name)), f"icl.{name}", 1)
    for name in ("examples", "seed", "example_seed"):
        spec[name] = check_int(t.get(name, getattr(ICLSpec, name)), f"icl.{name}", 0)
    spec["features"] = check_choice(t.get("features", ICLSpec.features), "icl.features", get_args(Features))
    spec["scale"] = check_float(t.get("scale", ICLSpec.scale), "icl.scale", lambda x: x > 0, "a number > 0")
    spec["noise"] = check_float(t.get("noise", ICLSpec.noise), "icl.noise", lambda x: x >= 0, "a number >= 0")
    try:
        prompts, queries, _ = regression_prompts(ICLSpec(**spec), dim)
    except ValueError as exc:
        raise CaseError(str(exc)) from None
    return prompts, queries


def _queries(value: Any, key: str, dim: int) -> Queries:
    t = _table(value, key)
    check_keys(t, ("points", "weights", "labels"), key)
    also = (("n",),) if dim == 1 else ()
    points = _array(t.get("points", MISSING), f"{key}.points", ("n", dim), also)
    n = points.shape[0]
    weights = None
    if "weights" in t:
        weights = _normalised(_array(t["weights"], f"{key}.weights", (n,), names="(n,)"), f"{key}.weights",
                              t["weights"], positive=False)
    labels = None
    if "labels" in t:
        labels = _array(t["labels"], f"{key}.labels", (n, "c"), ((n,),), names="(n, c)")
    return Queries(points=points, weights=weights, labels=labels)


# ----------------------------------------------------------------- prompts


def _gaussian(t: dict, key: str, dim: int) -> GaussianPrompt:
    mean = _array(t.get("mean", MISSING), f"{key}.mean", (dim,))
    cov_value = t.get("cov", MISSING)
    cov = _array(cov_value, f"{key}.cov", (dim, dim), ((), (1,)) if dim == 1 else ())
    return GaussianPrompt(mean=mean, cov=_spd(cov, f"{key}.cov", cov_value))


def _normalised(w: np.ndarray, key: str, value: Any, positive: bool) -> np.ndarray:
    try:
        return _frozen(normalised_weights(w, positive))
    except ValueError as exc:
        fail(key, value, str(exc))


def _mixture(t: dict, key: str, dim: int) -> MixturePrompt:
    w_value = t.get("weights", MISSING)
    weights = _array(w_value, f"{key}.weights", ("c",))
    weights = _normalised(weights, f"{key}.weights", w_value, positive=True)
    c = weights.size
    means = _array(t.get("means", MISSING), f"{key}.means", (c, dim), names="(c, d)")
    covs_value = t.get("covs", MISSING)
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
    lower = _array(t.get("lower", MISSING), f"{key}.lower", (dim,))
    upper = _array(t.get("upper", MISSING), f"{key}.upper", (dim,))
    if not np.all(upper > lower):
        expected = f"upper > lower on every axis (lower = {show(t['lower'])})"
        fail(f"{key}.upper", t["upper"], expected)
    return UniformPrompt(lower=lower, upper=upper)


def _tokens(t: dict, key: str, dim: int) -> TokensPrompt:
    also = (("n",),) if dim == 1 else ()
    points = _array(t.get("points", MISSING), f"{key}.points", ("n", dim), also)
    n = points.shape[0]
    w_value = t.get("weights", MISSING)
    if w_value is MISSING:
        return TokensPrompt(points=points, weights=_frozen(np.full(n, 1.0 / n)))
    weights = _array(w_value, f"{key}.weights", (n,), names="(n,)")
    weights = _normalised(weights, f"{key}.weights", w_value, positive=False)
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
    kind = check_choice(table.get("kind", MISSING), f"{key}.kind", tuple(_PROMPTS))
    parse, keys = _PROMPTS[kind]
    check_keys(table, ("kind", *keys, *extra), key)
    return parse(table, key, dim)


def _prompts(value: Any, dim: int) -> tuple[tuple[Prompt, ...], tuple[Prompt | None, ...], tuple[Queries | None, ...]]:
    """The prompts and, per prompt, its ``target`` measure or None and its ``queries`` or None."""
    if not (isinstance(value, list) and value):
        fail("prompts", value, "at least one [[prompts]] table")
    prompts, targets, queries = [], [], []
    for i, item in enumerate(value):
        key = f"prompts[{i}]"
        prompts.append(_prompt(item, key, dim, extra=("target", "queries")))
        target = item.get("target")
        targets.append(None if target is None else _prompt(target, f"{key}.target", dim))
        q = item.get("queries")
        queries.append(None if q is None else _queries(q, f"{key}.queries", dim))
    return tuple(prompts), tuple(targets), tuple(queries)
