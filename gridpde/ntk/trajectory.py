"""`gridpde ntk`: the injectivity diagnostics of :mod:`gridpde.ntk.diagnostics` on a case.

On the case's prompts (depth 0), and, given a training result file, along
the trajectory: at every checkpoint, on the measures entering each layer
(depths s = l / L, l = 0 .. L-1), computed with the case's method and the
checkpoint's heads. Depth 0 does not change with training (the prompts);
the deeper layers do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from gridpde.errors import CaseError
from gridpde.heads import HEAD_ARRAYS, Heads
from gridpde.method import make_method
from gridpde.ntk.diagnostics import NTKDiagnostics, ntk_diagnostics
from gridpde.spec import Case

SUMMARY = ("tangent", "lse_a_pooled", "lse_b")


def layer_measures(case: Case, method: str | None, heads: Heads) -> list[list]:
    """Per layer l, the prompts' measures at depth l / L (grid or token measures)."""
    runner = make_method(case, method)
    solver = runner.solver(heads)
    states = runner.initial_states(case.prompts)
    L = heads.layers
    out = []
    for layer in range(L):
        if layer:
            states = [runner.advance(solver, st, (layer - 1) / L, layer / L) for st in states]
        out.append([runner.measure(st) for st in states])
    return out


@dataclass
class Summary:
    """Smallest relative singular value and rank/full per diagnostic."""

    rel_min: dict[str, float]
    rank: dict[str, int]
    full: dict[str, int]

    @classmethod
    def of(cls, diag: NTKDiagnostics) -> Summary:
        specs = {name: getattr(diag, name) for name in SUMMARY}
        return cls(
            {k: float(s.rel_min) for k, s in specs.items()},
            {k: int(s.rank) for k, s in specs.items()},
            {k: int(min(s.n_cols, s.n_samples)) for k, s in specs.items()},
        )


def table(diag: NTKDiagnostics) -> str:
    """The diagnostics as a table: diagnostic, sigma_min/sigma_max, rank/full, tolerance."""
    rows = [f"{'diagnostic':<16} {'sigma_min/max':>14} {'rank/full':>11} {'tolerance':>10}"]
    named = [(n, getattr(diag, n)) for n in SUMMARY]
    named += [(f"lse_a[{p}]", s) for p, s in enumerate(diag.lse_a)]
    for name, s in named:
        full = min(s.n_cols, s.n_samples)
        rows.append(f"{name:<16} {s.rel_min:>14.3e} {s.rank:>5}/{full:<5} {s.tol:>10.2e}")
    rows.append("tangent: the definitional map a -> G_a(theta_k) (docs/model.md 6); lse_a_pooled: reading (a),")
    rows.append("all prompts' B -> Lambda(Bx) modulo affine in B; lse_b: reading (b), z -> Lambda_p(z).")
    return "\n".join(rows)


def trajectory(case: Case, method: str, result: Path, report=None) -> dict:
    """Diagnostics at every checkpoint of a training result and every layer depth.

    Returns datasets for the result file: /ntk/trajectory/{name}/rel_min and
    rank (checkpoint, layer), with /ntk/trajectory/step (checkpoint,).
    """
    with h5py.File(result, "r") as f:
        if "train" not in f or "heads" not in f["train"]:
            raise CaseError(f"--result: {result} holds no training checkpoints (/train/heads)")
        steps = f["train/checkpoint_step"][()]
        heads = [Heads(*(f["train/heads"][k][i] for k in HEAD_ARRAYS), case.heads.scale_scores)
                 for i in range(len(steps))]
    L = case.heads.layers
    rel = {n: np.full((len(steps), L), np.nan) for n in SUMMARY}
    rank = {n: np.zeros((len(steps), L), np.int64) for n in SUMMARY}
    for i, h in enumerate(heads):
        for layer, measures in enumerate(layer_measures(case, method, h)):
            summ = Summary.of(ntk_diagnostics(measures))
            for n in SUMMARY:
                rel[n][i, layer] = summ.rel_min[n]
                rank[n][i, layer] = summ.rank[n]
        if report is not None:
            report(f"  checkpoint step {steps[i]}: tangent sigma_min/max per layer "
                   + ", ".join(f"{v:.2e}" for v in rel["tangent"][i]))
    out = {"ntk/trajectory/step": (np.asarray(steps), ("checkpoint",))}
    for n in SUMMARY:
        out[f"ntk/trajectory/{n}_rel_min"] = (rel[n], ("checkpoint", "layer"))
        out[f"ntk/trajectory/{n}_rank"] = (rank[n], ("checkpoint", "layer"))
    return out


def plot_spectra(diag: NTKDiagnostics, path: Path) -> Path:
    """Relative singular values of each diagnostic, log scale."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name in SUMMARY:
        s = getattr(diag, name)
        ax.semilogy(np.arange(1, s.relative.size + 1), np.maximum(s.relative, 1e-18), "o-", ms=3, label=name)
    ax.set_xlabel("index")
    ax.set_ylabel("sigma / sigma_max")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def plot_trajectory(data: dict, path: Path) -> Path:
    """Smallest relative singular value against training step, one line per layer."""
    from matplotlib.figure import Figure

    steps = data["ntk/trajectory/step"][0]
    fig = Figure(figsize=(4 * len(SUMMARY), 3.5))
    for i, name in enumerate(SUMMARY):
        ax = fig.add_subplot(1, len(SUMMARY), i + 1)
        rel = data[f"ntk/trajectory/{name}_rel_min"][0]
        for layer in range(rel.shape[1]):
            ax.semilogy(steps, np.maximum(rel[:, layer], 1e-18), "o-", ms=3, label=f"layer {layer}")
        ax.set_title(f"{name}: sigma_min / sigma_max")
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
