"""gridpde: infinitely deep and wide transformers as a neural PDE.

The Python API (see the README's "Python" section)::

    import gridpde
    case = gridpde.load_case("cases/quickstart.toml")     # or parse_case(text), or Case(...)
    snaps = gridpde.forward(case)                          # snapshots as arrays
    problem = gridpde.Problem(case)                        # with a [loss]: risk and gradient
    res = problem.risk_and_grad(case.heads)

Names are imported on first use, so ``import gridpde`` stays light and
leaves numba's settings alone.
"""

from importlib import import_module

__version__ = "0.1.0"
SCHEMA_VERSION = 1

_EXPORTS = {
    # cases: read, or build from Python objects
    "load_case": "gridpde.casefile",
    "parse_case": "gridpde.casefile",
    "Case": "gridpde.spec",
    "GridSpec": "gridpde.spec",
    "SolverSpec": "gridpde.spec",
    "LossSpec": "gridpde.spec",
    "TrainSpec": "gridpde.spec",
    "OutputSpec": "gridpde.spec",
    "GaussianPrompt": "gridpde.prompts",
    "MixturePrompt": "gridpde.prompts",
    "UniformPrompt": "gridpde.prompts",
    "TokensPrompt": "gridpde.prompts",
    "Heads": "gridpde.heads",
    "conditional_wasserstein": "gridpde.heads",
    "Grid": "gridpde.grid.mesh",
    # forward, risk, gradient, training
    "forward": "gridpde.driver",
    "run_case": "gridpde.driver",
    "make_method": "gridpde.method",
    "GridMeasure": "gridpde.measures",
    "TokenMeasure": "gridpde.measures",
    "Problem": "gridpde.objective.problem",
    "RiskResult": "gridpde.objective.problem",
    "gradient_checks": "gridpde.objective.gradcheck",
    "train_heads": "gridpde.train.flow",
    # NTK injectivity
    "ntk_diagnostics": "gridpde.ntk.diagnostics",
    "layer_measures": "gridpde.ntk.trajectory",
    # result files
    "read_result": "gridpde.io.results",
    "write_result": "gridpde.io.results",
    "plot_result": "gridpde.io.plot",
    # errors
    "CaseError": "gridpde.errors",
    "RunError": "gridpde.errors",
    "NumericalError": "gridpde.errors",
    "MassLost": "gridpde.errors",
}

__all__ = ["__version__", "SCHEMA_VERSION", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gridpde' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
