"""The ``gridpde`` command line. No numerics here.

Exit status: 0 success, 2 bad case file or arguments (one line naming what is
wrong), 1 a run that failed after saving what it computed, 130 on Ctrl-C,
143 on SIGTERM (both after saving a checkpoint).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from gridpde import __version__
from gridpde.errors import CaseError, NumericalError, RunError, Terminated


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # exit status 2 with one line, as for case errors
        self.exit(2, f"gridpde: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gridpde", description="Infinitely deep and wide transformers as a neural PDE.")
    p.add_argument("--version", action="version", version=f"gridpde {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run a case file and write an HDF5 result")
    r.add_argument("case", type=Path)
    r.add_argument("-o", "--output", type=Path, help="result file (default: [output] path)")
    r.add_argument("--method", choices=["grid", "particles"], help="override [solver] method")
    r.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    r.add_argument("--no-plot", action="store_true", help="skip the figures")

    v = sub.add_parser("validate", help="measure the solver against exact solutions")
    v.add_argument("--quick", action="store_true", help="the subset the test suite runs")
    from gridpde.validation.names import STUDY_NAMES

    v.add_argument("--only", metavar="NAME",
                   help="run only the studies whose name contains NAME: " + ", ".join(STUDY_NAMES))
    v.add_argument("--slow", action="store_true", help="add the training convergence experiment (long)")

    g = sub.add_parser("gradcheck", help="adjoint gradient against finite differences")
    g.add_argument("case", type=Path)
    g.add_argument("--method", choices=["grid", "particles"], help="override [solver] method")
    g.add_argument("--eps", type=float, default=1e-5, help="central-difference step")
    g.add_argument("--seed", type=int, default=0, help="seed of the random directions")

    n = sub.add_parser("ntk", help="NTK injectivity diagnostics on a case (and along training)")
    n.add_argument("case", type=Path)
    n.add_argument("--method", choices=["grid", "particles"], help="override [solver] method")
    n.add_argument("--result", type=Path, help="a training result file: diagnose its checkpoints")
    n.add_argument("-o", "--output", type=Path, help="folder for the figures")

    pl = sub.add_parser("plot", help="figures (and animations) of a result file")
    pl.add_argument("result", type=Path)
    pl.add_argument("-o", "--output", type=Path, help="folder for the figures")
    pl.add_argument("--format", choices=["png", "pdf", "svg"], default="png",
                    help="file format of the figures (pdf, svg: vector output; default png)")
    pl.add_argument("--movie", action="store_true",
                    help="also animate the density or tokens through depth (and the heads along training): "
                         "MP4 with ffmpeg, else GIF")
    pl.add_argument("--rescaled", action="store_true",
                    help="draw tokens as e^{-sV} x (V the mean value matrix of the active layer)")
    pl.add_argument("--only", metavar="NAMES", help="comma-separated figure names to write (e.g. density_p0,moments)")
    pl.add_argument("--prefix", default="", help="put before each file name")
    pl.add_argument("--dpi", type=int, default=100, help="resolution of PNG figures (default 100)")

    i = sub.add_parser("info", help="what a result file holds")
    i.add_argument("result", type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from gridpde._numba import prefer_workqueue

    prefer_workqueue()
    from gridpde.parallel import world

    ranks = world()
    ranks.stop_code = 0
    if ranks.size > 1:  # every rank gets the signal: stop together at the next agreed point
        previous_int = signal.signal(signal.SIGINT, lambda signum, frame: ranks.note_stop(signum))
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: ranks.note_stop(signum))
    else:
        previous_int = signal.getsignal(signal.SIGINT)
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: _terminate(ranks, signum))

    def say(line: str) -> None:  # under MPI every rank ends alike; rank 0 says how
        if world().root:
            print(line, file=sys.stderr)

    try:
        return _COMMANDS[args.command](args)
    except CaseError as exc:
        say(f"gridpde: error: {exc}")
        return 2
    except (RunError, NumericalError) as exc:
        say(f"gridpde: run failed: {exc}")
        return 1
    except Terminated:
        say("gridpde: stopped by SIGTERM")
        return 143
    except KeyboardInterrupt:
        say("gridpde: interrupted")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def _terminate(ranks, signum):
    """Serial SIGTERM: stop now, and note it, for the next agreed point if this raise is swallowed."""
    ranks.note_stop(signum)
    raise Terminated()


def _run(args) -> int:
    from gridpde.casefile import load_case
    from gridpde.driver import run_case

    case = load_case(args.case)
    out = args.output or Path(case.output.path)
    run_case(case, out, method=args.method, resume=args.resume)
    from gridpde.parallel import world

    if case.output.plot and not args.no_plot and world().root:
        from gridpde.io.plot import plot_result

        for f in plot_result(out):
            print(f"wrote {f}", file=sys.stderr)
    return 0


def _on_root(fn):
    """Run a command on rank 0 only under MPI (its work is not spread over prompts); the other ranks wait
    and end with rank 0's exit status, re-raising its error class with its message."""

    def wrapped(args) -> int:
        from gridpde.parallel import world

        ranks = world()
        if ranks.size == 1:
            return fn(args)
        outcome: tuple = (0, None, "")
        if ranks.root:
            try:
                outcome = (fn(args), None, "")
            except (CaseError, RunError, NumericalError, KeyboardInterrupt) as exc:
                outcome = (None, type(exc), str(exc))
                ranks.bcast(outcome)
                raise
        code, cls, message = ranks.bcast(outcome)
        if cls is not None:
            raise cls(message, 0.0) if cls is NumericalError else cls(message)
        return code

    return wrapped


@_on_root
def _validate(args) -> int:
    from gridpde.validation.names import STUDY_NAMES
    from gridpde.validation.suite import run_suite

    if args.only is not None and not any(args.only in name for name in STUDY_NAMES):
        raise CaseError(f"--only {args.only!r}: no study has it in its name; studies: {', '.join(STUDY_NAMES)}")

    return 0 if run_suite(quick=args.quick, only=args.only, slow=args.slow) else 1


def _gradcheck(args) -> int:
    import numpy as np

    from gridpde.casefile import load_case
    from gridpde.objective.gradcheck import gradient_checks, report
    from gridpde.objective.problem import Problem

    if not (np.isfinite(args.eps) and 0.0 < args.eps <= 1.0):
        raise CaseError(f"--eps {args.eps}: expected a number in (0, 1] (the central-difference step)")
    case = load_case(args.case)
    problem = Problem(case, args.method)
    from gridpde.parallel import world

    text = report(*gradient_checks(problem, case.heads, eps=args.eps, seed=args.seed))
    if world().root:
        print(f"gradcheck: {problem.method.name} method, {len(case.prompts)} prompt(s)", file=sys.stderr)
        print(text)
    return 0


@_on_root
def _ntk(args) -> int:
    from gridpde.ntk import trajectory as diagnose
    from gridpde.casefile import load_case
    from gridpde.io.results import add_datasets

    case = load_case(args.case)
    method = args.method or case.solver.method
    out_dir = args.output or Path(case.output.path).with_name(Path(case.output.path).stem + "_figures")
    diag = diagnose.ntk_diagnostics(diagnose.layer_measures(case, method, case.heads)[0])
    print(f"NTK injectivity on the {len(case.prompts)} prompt(s) of {args.case} ({method} measures)")
    print(diagnose.table(diag))
    print(f"wrote {diagnose.plot_spectra(diag, out_dir / 'ntk_spectra.png')}")
    if args.result is not None:
        print(f"along the training in {args.result} (depth l/L entering each layer):", file=sys.stderr)
        data = diagnose.trajectory(case, method, args.result, report=lambda m: print(m, file=sys.stderr))
        add_datasets(args.result, data)
        print(f"stored /ntk/trajectory in {args.result}")
        print(f"wrote {diagnose.plot_trajectory(data, out_dir / 'ntk_trajectory.png')}")
    return 0


def _plot(args) -> int:
    from gridpde.io.plot import plot_result

    if not 20 <= args.dpi <= 600:
        raise CaseError(f"--dpi {args.dpi}: expected an integer in [20, 600]")
    only = tuple(n.strip() for n in args.only.split(",")) if args.only else None
    for f in plot_result(args.result, args.output, fmt=args.format, rescaled=args.rescaled, dpi=args.dpi,
                         only=only, prefix=args.prefix):
        print(f)
    if args.movie:
        from gridpde.io.movie import write_movies

        movies = write_movies(args.result, args.output, rescaled=args.rescaled)
        for f in movies:
            print(f)
        if not movies:
            print("no movie: the result holds fewer than 2 snapshots", file=sys.stderr)
    return 0


def _info(args) -> int:
    from gridpde.io.results import describe

    print(describe(args.result))
    return 0


_COMMANDS = {
    "run": _run,
    "validate": _validate,
    "gradcheck": _gradcheck,
    "ntk": _ntk,
    "plot": _plot,
    "info": _info,
}
