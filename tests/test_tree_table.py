"""The tree table (gridpde.attention.tree) against exact sums, where the tensor table is too large."""

import numpy as np
import pytest

from gridpde.attention import table as tb
from gridpde.attention import tree as tr
from gridpde.attention.tensor import tensor_velocity


def _faces_problem(dim, n, heads, kind, bscale=1.0 / 6.0, seed=0):
    """Cell masses on [-6, 6]^dim, every face centre as a target, random heads (O(1) scores times bscale * 6)."""
    edges = np.linspace(-6.0, 6.0, n + 1)
    c = 0.5 * (edges[1:] + edges[:-1])
    ys = [np.zeros(1)] * (3 - dim) + [c] * dim
    Y = np.meshgrid(*ys, indexing="ij")
    live = list(range(3 - dim, 3))
    if kind == "gauss":
        w = np.exp(-0.5 * sum(Y[a] ** 2 for a in live) / 1.5)
    else:  # two bumps apart along the diagonal: m(z) switches across a plane
        w = np.exp(-0.5 * sum((Y[a] - 2.5) ** 2 for a in live) / 0.5)
        w += 0.6 * np.exp(-0.5 * sum((Y[a] + 2.5) ** 2 for a in live) / 0.5)
    w /= w.sum()
    faces = []
    for a in live:
        G = np.meshgrid(*[edges if b == a else c for b in live], indexing="ij")
        f = np.zeros((G[0].size, 3))
        for i, b in enumerate(live):
            f[:, b] = G[i].ravel()
        faces.append(f)
    rng = np.random.default_rng(seed)
    B = np.zeros((heads, 3, 3))
    V = np.zeros((heads, 3, 3))
    ix = np.ix_(range(heads), live, live)
    B[ix] = rng.normal(size=(heads, dim, dim)) * bscale
    V[ix] = rng.normal(size=(heads, dim, dim))
    h = np.array([0.0] * (3 - dim) + [12.0 / n] * dim)
    return np.concatenate(faces), w, ys, B, V, h


def _exact(targets, w, ys, B, V, h):
    out = np.empty((len(targets), 3))
    tensor_velocity(targets, w, *ys, B, V, h, out, np.empty((B.shape[0], len(targets))))
    return out


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("kind", ["gauss", "bumps"])
def test_the_tree_meets_its_tolerance_in_3d(kind, kernel_build):
    """Every face of a 16^3 grid, 8 heads: the tree's velocity is within tol of exact sums, and its own
    a posteriori estimate is within tol too."""
    targets, w, ys, B, V, h = _faces_problem(3, 16, 8, kind)
    tol = 1e-6
    out = np.empty((len(targets), 3))
    info = tr.tree_velocity(targets, w, *ys, B, V, h, out, tol=tol)
    assert info["method"] == "tree", info["reason"]
    assert info["error_estimate"] <= tol
    assert _rel(out, _exact(targets, w, ys, B, V, h)) <= tol


def test_where_the_tensor_table_is_too_large_table_velocity_takes_a_tree():
    """Two bumps along (1, 1, 1): the tensor table needs more than its 2e6-node cap at tol 1e-6 (9.1e6,
    measured with the cap raised); the tree's leaves crowd along the switching plane and it fits (1.4e6
    nodes), so table_velocity uses it, says why, and meets the tolerance."""
    targets, w, ys, B, V, h = _faces_problem(3, 16, 8, "bumps")
    out = np.empty((len(targets), 3))
    info = tb.table_velocity(targets, w, *ys, B, V, h, out, tol=1e-6)
    assert info["method"] == "table" and info["kind"] == "tree" and "too large" in info["reason"], info["reason"]
    assert info["table_nodes"] < tb.MAX_NODES and info["error_estimate"] <= 1e-6
    assert _rel(out, _exact(targets, w, ys, B, V, h)) <= 1e-6
    levels = info["table"].level
    assert levels.max() >= levels.min() + 3  # adapted: leaves 8x smaller along the feature than away from it
    # the next stage on the box starts from the tree's leaves, and takes the tree at once
    assert info["layout"].tree is not None
    again = tb.table_velocity(targets, w * (1 + 1e-3 * np.cos(w.size * w)), *ys, B, V, h, out, tol=1e-6,
                              layout=info["layout"])  # fmt: skip
    assert again["kind"] == "tree" and "earlier stage" in again["reason"] and again["error_estimate"] <= 1e-6


@pytest.mark.parametrize("dim", [1, 2])
def test_the_tree_in_the_padded_1d_and_2d_layouts(dim):
    targets, w, ys, B, V, h = _faces_problem(dim, 48, 4, "bumps", bscale=0.3)
    out = np.empty((len(targets), 3))
    info = tr.tree_velocity(targets, w, *ys, B, V, h, out, tol=1e-9)
    assert info["method"] == "tree", info["reason"]
    assert _rel(out, _exact(targets, w, ys, B, V, h)) <= 1e-9


def test_the_leaves_tile_the_box_and_a_refined_tree_keeps_its_coarse_leaves():
    targets, w, ys, B, V, h = _faces_problem(3, 12, 4, "bumps")
    z = np.einsum("jab,tb->jta", B, targets).reshape(-1, 3)
    zlo, zhi = z.min(0) - 0.1, z.max(0) + 0.1
    coarse = tr.build_tree(w, ys, h, zlo, zhi, 1e-3, 6, z)
    fine = tr.build_tree(w, ys, h, zlo, zhi, 1e-6, 6, z, first=coarse)
    for tree in (coarse, fine):
        assert np.isclose(np.sum(np.prod(2.0 / tree.rh, axis=1)), np.prod(zhi - zlo), rtol=1e-12)
        assert tree.lookup[3].min() >= 0
    assert fine.leaves > coarse.leaves
    # a leaf both trees have carries the same coefficients (not recomputed, not changed)
    key = {tuple(l) + tuple(i): k for k, (l, i) in enumerate(zip(coarse.level, coarse.index))}
    shared = [(key[tuple(l) + tuple(i)], k) for k, (l, i) in enumerate(zip(fine.level, fine.index))
              if tuple(l) + tuple(i) in key]  # fmt: skip
    assert shared
    for a, b in shared:
        assert np.array_equal(coarse.coef[a], fine.coef[b])


def test_nodes_whose_sums_underflow_take_the_direct_branch(monkeypatch):
    """Forced: with the underflow threshold raised to 1e-3 of the (stabilised, unit) mass, the nodes whose
    sum falls below it come from the exact kernel's direct branch, and the velocity still meets tol."""
    targets, w, ys, B, V, h = _faces_problem(2, 32, 3, "bumps", bscale=1.0)
    monkeypatch.setattr(tr, "UNDERFLOW", 1e-3)
    out = np.empty((len(targets), 3))
    info = tr.tree_velocity(targets, w, *ys, B, V, h, out, tol=1e-8)
    assert info["method"] == "tree", info["reason"]
    assert 0 < info["fallback_nodes"] < info["table_nodes"]
    assert _rel(out, _exact(targets, w, ys, B, V, h)) <= 1e-8


def test_strong_tilts_fall_back_to_exact_sums_and_say_why():
    """Scores ~ 60: the tree would need more than MAX_LEVEL halvings; the call takes exact sums and says so."""
    targets, w, ys, B, V, h = _faces_problem(2, 32, 3, "bumps", bscale=10.0)
    out = np.empty((len(targets), 3))
    info = tr.tree_velocity(targets, w, *ys, B, V, h, out, tol=1e-8)
    assert info["method"] == "exact" and "deeper than" in info["reason"]
    assert _rel(out, _exact(targets, w, ys, B, V, h)) == 0.0


@pytest.mark.parametrize("dim,forced", [(2, False), (3, False), (2, True)], ids=["2d", "3d", "2d-underflow"])
def test_the_vjp_is_the_transpose_of_the_frozen_forward(dim, forced, kernel_build, monkeypatch):
    """<ubar, J delta> by central differences of the tree on its frozen leaves (w through refit_tree, B and V
    through evaluate_tree) equals <VJP(ubar), delta>, in w, B and V, serial and parallel; with the
    underflow threshold forced up, through the exact kernel's VJP at those nodes as well."""
    if forced:
        monkeypatch.setattr(tr, "UNDERFLOW", 1e-3)
    n, bscale = (10, 0.15) if dim == 3 else (24, 0.3)
    targets, w, ys, B, V, h = _faces_problem(dim, n, 3, "bumps", bscale=bscale)
    out = np.empty((len(targets), 3))
    info = tr.tree_velocity(targets, w, *ys, B, V, h, out, tol=1e-6)
    tree = info["tree"]
    assert info["method"] == "tree" and tree.leaves > 1
    assert (tree.fallback_nodes > 0) == forced
    rng = np.random.default_rng(3)
    live = list(range(3 - dim, 3))
    ubar = np.zeros_like(out)
    ubar[:, live] = rng.normal(size=(len(targets), dim))
    wbar, Bbar, Vbar = tr.evaluate_tree_vjp(tree, targets, B, V, ubar)

    def f(wv, Bv, Vv):
        t = tree if wv is w else tr.refit_tree(tree, wv)
        return np.sum(ubar * tr.evaluate_tree(t, targets, Bv, Vv, np.empty_like(out)))

    dw = rng.normal(size=w.shape) * w  # relative perturbations keep the masses positive
    dB = np.zeros_like(B)
    dV = np.zeros_like(V)
    ix = np.ix_(range(3), live, live)
    dB[ix] = rng.normal(size=(3, dim, dim))
    dV[ix] = rng.normal(size=(3, dim, dim))
    for delta, bar, args in ((dw, wbar, lambda e: (w + e * dw, B, V)), (dB, Bbar, lambda e: (w, B + e * dB, V)),
                             (dV, Vbar, lambda e: (w, B, V + e * dV))):  # fmt: skip
        eps = 1e-6
        fd = (f(*args(eps)) - f(*args(-eps))) / (2 * eps)
        assert abs(fd - np.sum(bar * delta)) <= 1e-6 * (abs(fd) + 1e-12), (fd, np.sum(bar * delta))
