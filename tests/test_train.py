"""Training: the flow, its records, checkpoints and bit-for-bit resume."""

import dataclasses
import itertools
import types
from pathlib import Path

import h5py
import numpy as np
import pytest

import gridpde.train.flow as train_module
from gridpde.builders import case_document, dump_case, mixture
from gridpde.casefile import parse_case
from gridpde.spec import TrainSpec
from gridpde.cli import main
from gridpde.heads import Heads, conditional_wasserstein
from gridpde.objective.problem import Problem, RiskResult
from gridpde.grid.forward import StepLimit
from gridpde.train.flow import TrainRecord, TrainState, train

CASES = Path(__file__).resolve().parent.parent / "cases"

CASE = case_document(cells=None, init=(0.7, 5), prompts=[mixture([0.5, 0.5], [[-1.0], [1.0]], [[[0.2]], [[0.3]]])],
                     teacher=(0.7, 6), solver={"method": "particles", "tokens": 40},
                     train={"steps": 0, "lr": 0.5, "checkpoint_every": 2}, output={"snapshots": 2})


def _text(doc: dict, steps: int, path) -> str:
    """The case-file text of ``doc`` with [train] steps and [output] path set."""
    return dump_case({**doc, "train": {**doc["train"], "steps": steps}, "output": {**doc["output"], "path": str(path)}})


def _implicit(text: str, **train) -> str:
    lines = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in train.items())
    return text.replace("[train]\n", "[train]\nscheme = \"implicit\"\n" + lines)


def test_conditional_wasserstein_is_an_assignment_per_layer(rng):
    a = Heads.random(3, 4, 2, 2, 1.0, 1)
    perm = Heads(*(v[:, [2, 0, 3, 1]] for v in a.arrays().values()))  # heads reordered inside layers
    assert conditional_wasserstein(a, perm) == 0.0
    shifted = a.with_flat(a.flat() + 0.1)
    n = sum(v[0, 0].size for v in a.arrays().values())  # entries per head
    assert conditional_wasserstein(a, shifted) == pytest.approx(0.1 * np.sqrt(n), rel=1e-12)


def test_risk_decreases_monotonically_with_backtracking(tmp_path):
    case = parse_case(_text(CASE, 8, tmp_path / "x.h5"))
    problem = Problem(case)
    heads = case.heads
    rec = TrainRecord()
    state = train(problem, case.train, TrainState(0, heads), heads, rec)
    assert state.step == 8 and state.status == "finished"
    assert np.all(np.diff(rec.risk) <= 0) and rec.risk[-1] < rec.risk[0]
    assert rec.w_c[0] == 0.0 and rec.w_c[-1] > 0.0


GRID_CASE = case_document(box=12.0, cells=96, init=(0.7, 1), loss={"kind": "mmd", "sigma": 0.8}, teacher=(0.7, 2),
                          solver={"scheme": "upwind", "time": "euler", "mass_tol": 1e-2},
                          train={"steps": 0, "lr": 40.0, "checkpoint_every": 2}, output={"snapshots": 2})


@pytest.mark.parametrize("variant", ["explicit", "implicit", "grid-refining"])
def test_resume_after_interrupt_matches_uninterrupted_run_bit_for_bit(tmp_path, monkeypatch, variant):
    """The grid case's first trial steps (lr 40) need twice the depth steps: the schedule the
    resumed run follows comes from the checkpoint."""
    full = tmp_path / "full.h5"
    text = _text(GRID_CASE if variant == "grid-refining" else CASE, 7, full.as_posix())
    if variant == "implicit":
        text = _implicit(text, inner_steps=5)
    case_file = tmp_path / "case.toml"
    case_file.write_text(text)
    assert main(["run", str(case_file), "--no-plot"]) == 0

    cut = tmp_path / "cut.h5"
    calls = {"n": 0}
    real = train_module.conditional_wasserstein

    def interrupt_at_step_5(a, b):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(a, b)

    monkeypatch.setattr(train_module, "conditional_wasserstein", interrupt_at_step_5)
    assert main(["run", str(case_file), "-o", str(cut), "--no-plot"]) == 130
    monkeypatch.setattr(train_module, "conditional_wasserstein", real)
    with h5py.File(cut) as f:
        assert f.attrs["status"] == "interrupted" and f["checkpoint/step"][()] == 5
    assert main(["run", str(case_file), "-o", str(cut), "--resume", "--no-plot"]) == 0
    with h5py.File(full) as a, h5py.File(cut) as b:
        for name in ("risk", "grad_norm", "lr", "w_c", "risk_prompt", "checkpoint_step", "evaluations", "depth_steps"):
            assert np.array_equal(a["train"][name][()], b["train"][name][()]), name
        for k in "QKV":
            assert np.array_equal(a["heads"][k][()], b["heads"][k][()])
            assert np.array_equal(a["train/heads"][k][()], b["train/heads"][k][()])
        state = "density" if variant == "grid-refining" else "positions"
        assert np.array_equal(a[state][()], b[state][()])
        if variant == "grid-refining":
            assert a["train/depth_steps"][0] > Problem(parse_case(text)).depth_steps
            assert np.array_equal(a["checkpoint/schedules"][()], b["checkpoint/schedules"][()])


@pytest.mark.parametrize("scheme", ["explicit", "implicit"])
def test_nan_stops_with_exit_1_naming_the_step_and_keeps_last_state(tmp_path, monkeypatch, capsys, scheme):
    out = tmp_path / "nan.h5"
    case_file = tmp_path / "case.toml"
    text = _text(CASE, 6, out.as_posix())
    # evaluations per step: explicit 1 trial; implicit (1 inner step) a curvature probe and 1 trial
    case_file.write_text(_implicit(text, inner_steps=1) if scheme == "implicit" else text)
    first_bad = 4 if scheme == "explicit" else 6  # the first evaluation of step 3
    real = Problem.risk_and_grad
    calls = {"n": 0}

    def poisoned(self, heads):
        calls["n"] += 1
        res = real(self, heads)
        if calls["n"] >= first_bad:  # from step 3 on: backtracking cannot escape
            res.risk = float("nan")
        return res

    monkeypatch.setattr(Problem, "risk_and_grad", poisoned)
    assert main(["run", str(case_file), "--no-plot"]) == 1
    assert "training step 3" in capsys.readouterr().err
    with h5py.File(out) as f:
        assert f.attrs["status"] == "nan"
        assert f["checkpoint/step"][()] == 2
        assert np.all(np.isfinite(f["checkpoint/Q"][()]))


def test_implicit_step_solves_the_implicit_euler_equation(tmp_path):
    """theta' = theta - lr L M grad R(theta'), to the inner tolerance, and R(theta') <= R(theta) - |d|^2 / (2 lr L M)."""
    case = parse_case(_implicit(_text(CASE, 1, tmp_path / "x.h5"), inner_tol=1e-9, inner_steps=200))
    problem = Problem(case)
    heads = case.heads
    state = train(problem, case.train, TrainState(0, heads), heads, TrainRecord())
    new = problem.risk_and_grad(state.heads)
    LM, lr = 4, case.train.lr
    step = state.heads.flat() - heads.flat()
    residual = step + lr * LM * new.grad.flat()
    assert np.linalg.norm(residual) <= 1e-7 * np.linalg.norm(step)
    assert new.risk <= problem.risk(heads).risk - step @ step / (2 * lr * LM)


def test_implicit_and_explicit_euler_converge_to_the_same_flow_at_order_one(tmp_path):
    """Both schemes, run to flow time 2 with lr = 0.5, 0.25, 0.125: their gap halves with lr."""
    gaps = []
    for lr in (0.5, 0.25, 0.125):
        ends = []
        for scheme in ("explicit", "implicit"):
            text = _text(CASE, int(round(2 / lr)), tmp_path / "x.h5").replace("lr = 0.5", f"lr = {lr}")
            if scheme == "implicit":
                text = _implicit(text, inner_tol=1e-8)
            case = parse_case(text.replace("[train]\n", "[train]\nbacktrack = false\n"))
            heads = case.heads
            state = train(Problem(case), case.train, TrainState(0, heads), heads, TrainRecord())
            assert state.step == int(round(2 / lr))
            ends.append(state.heads.flat())
        gaps.append(np.linalg.norm(ends[0] - ends[1]))
    orders = np.log2(np.array(gaps[:-1]) / np.array(gaps[1:]))
    assert np.all((orders > 0.95) & (orders < 1.05)), (gaps, orders)


def test_implicit_steps_cross_the_slow_modes_explicit_steps_cannot(tmp_path):
    """Teacher-student from a nearby student: 3 implicit steps with lr = 1e6 take the risk below 1e-6 of its
    start, monotonically; 30 explicit steps (at their largest stable lr) do not reach 1e-3."""
    case = parse_case(_text(CASE, 3, tmp_path / "x.h5"))
    problem = Problem(case)
    # the student: the teacher's heads plus 0.05 noise
    rng = np.random.default_rng(0)
    t = case.loss.teacher
    heads = t.with_flat(t.flat() + 0.05 * rng.standard_normal(t.flat().size))
    risk0 = problem.risk(heads).risk
    ratios = {}
    for scheme, steps, lr in (("implicit", 3, 1e6), ("explicit", 30, 2.0)):
        spec = case.train.__class__(steps=steps, lr=lr, scheme=scheme, inner_steps=60)
        rec = TrainRecord()
        state = train(problem, spec, TrainState(0, heads), heads, rec)
        risks = np.array(rec.risk + [problem.risk(state.heads).risk])
        assert np.all(np.diff(risks) <= 0), scheme
        ratios[scheme] = risks[-1] / risk0
    assert ratios["implicit"] < 1e-6 < 1e-3 < ratios["explicit"], ratios


class _Refining:
    """A stand-in risk R = a |theta|^2 / 2 whose schedule is refined at one evaluation (a jumps 1 -> 1.5)."""

    def __init__(self, at: int):
        self.at, self.calls, self.version, self.a = at, 0, 0, 1.0

    @property
    def depth_steps(self):
        return 10 * (1 + self.version)

    schedules = None

    def risk_and_grad(self, heads):
        self.calls += 1
        if self.calls == self.at:
            self.version, self.a = 1, 1.5
        r = 0.5 * self.a * np.sum(heads.flat() ** 2)
        return RiskResult(r, np.array([r]), heads.with_flat(self.a * heads.flat()))


@pytest.mark.parametrize("scheme", ["explicit", "implicit"])
def test_a_refined_schedule_restarts_the_step_on_the_new_risk(scheme):
    """The step during which the risk changed is taken again from the same heads, on the new risk;
    its evaluations are counted, and depth_steps marks where the risk function changed."""
    heads = Heads.random(1, 2, 1, 1, 1.0, 3)
    problem = _Refining(at=3)
    rec = TrainRecord()
    state = train(problem, TrainSpec(steps=3, lr=0.05, scheme=scheme, inner_steps=3),
                  TrainState(0, heads), heads, rec)
    assert state.step == 3
    if scheme == "explicit":  # 1 evaluation per step: the second step met the refinement
        assert rec.depth_steps == [10, 20, 20] and rec.evaluations == [1, 3, 1]
    assert rec.depth_steps[-1] == 20 and np.all(np.diff(rec.depth_steps) >= 0)
    assert sum(rec.evaluations) == problem.calls - 1  # all but the initial evaluation
    for d in (10, 20):  # monotone on each risk function
        assert np.all(np.diff([r for r, k in zip(rec.risk, rec.depth_steps) if k == d]) <= 0)


class _Overshooting:
    """R = |theta|^2 / 2 on a depth-step schedule; evaluation ``wild`` is an overshooting trial: a risk 100 higher,
    needing ``need`` depth steps (refining the schedule for good unless the cap refuses it, like the grid)."""

    def __init__(self, wild: int, need: int):
        self.wild, self.need, self.calls, self.version = wild, need, 0, 0
        self.schedules = [[2, 2]]
        self.method = types.SimpleNamespace(step_cap=None)

    @property
    def depth_steps(self):
        return sum(map(sum, self.schedules))

    def use_schedules(self, schedules):
        if schedules != self.schedules:
            self.schedules, self.version = [list(s) for s in schedules], self.version + 1

    def risk_and_grad(self, heads):
        self.calls += 1
        x, rise = heads.flat(), 0.0
        if self.calls == self.wild:
            if self.method.step_cap is not None and self.need > self.method.step_cap:
                raise StepLimit(f"{self.need} depth steps > cap {self.method.step_cap}")
            self.use_schedules([[self.need, 2]])
            rise = 100.0
        r = 0.5 * np.sum(x**2) + rise
        return RiskResult(r, np.array([r]), heads.with_flat(x))


@pytest.mark.parametrize("need", [6, 200])
def test_an_overshooting_inner_trial_leaves_the_schedule_as_it_was(need):
    """The implicit step's rejected trials do not refine the schedule for good: one within the cap
    (SCHEDULE_GROWTH x 2 = 8 steps) is undone, one beyond it fails before it refines; no step is retaken."""
    heads = Heads.random(1, 2, 1, 1, 1.0, 3)
    problem = _Overshooting(wild=3, need=need)  # 1: initial, 2: the probe, 3: the first inner trial
    rec = TrainRecord()
    state = train(problem, TrainSpec(steps=2, lr=1e3, scheme="implicit", inner_steps=3),
                  TrainState(0, heads), heads, rec)
    assert state.step == 2
    assert problem.schedules == [[2, 2]] and rec.depth_steps == [4, 4], (problem.schedules, rec.depth_steps)
    assert sum(rec.evaluations) == problem.calls - 1  # nothing retaken: every evaluation is in a step
    assert np.all(np.diff(rec.risk) < 0)


def test_implicit_steps_report_their_inner_iterates(tmp_path):
    """on_inner sees every accepted inner iterate: the step's number, its evaluations so far, its risk
    (the objective falls, not necessarily the risk; the last iterate is the step's result)."""
    case = parse_case(_implicit(_text(CASE, 2, tmp_path / "x.h5"), inner_steps=6))
    problem = Problem(case)
    heads = case.heads
    seen: list[tuple[int, int, float]] = []
    rec = TrainRecord()
    state = train(problem, case.train, TrainState(0, heads), heads, rec, on_inner=lambda *a: seen.append(a))
    after = rec.risk[1:] + [problem.risk(state.heads).risk]
    for step in (1, 2):
        inner = [(e, r) for s, e, r in seen if s == step]
        assert 1 < len(inner) <= 6
        evaluations, risks = map(np.array, zip(*inner))
        assert np.all(np.diff(evaluations) > 0) and evaluations[-1] == rec.evaluations[step - 1]
        assert risks[-1] == after[step - 1] < rec.risk[step - 1]


def test_time_limit_cuts_an_implicit_step_short_after_an_accepted_iterate(tmp_path, monkeypatch):
    """Past the time limit the inner solve keeps its last accepted iterate (a decrease all the same) and stops.
    A clock that ticks 1 s per reading: the limit of 3.5 s falls inside the first step."""
    case = parse_case(_implicit(_text(CASE, 5, tmp_path / "x.h5"), inner_steps=50))
    problem = Problem(case)
    heads = case.heads
    inner = {}
    for limit in (0.0, 3.5):
        clock = itertools.count()
        monkeypatch.setattr(train_module.time, "perf_counter", lambda c=clock: float(next(c)))
        seen: list = []
        spec = dataclasses.replace(case.train, time_limit=limit, steps=1 if limit == 0 else 5)
        rec = TrainRecord()
        state = train(problem, spec, TrainState(0, heads), heads, rec, on_inner=lambda *a: seen.append(a))
        assert state.step == 1 and problem.risk(state.heads).risk < rec.risk[0]
        inner[limit] = len(seen)
    assert state.message.startswith("time limit 3.5 s")
    assert 1 <= inner[3.5] <= 3 < inner[0.0]


class _Uphill:
    """R = 1 + |theta|^2 / 2 with the gradient's sign flipped: every step down the "gradient" goes up
    (what a kink of the discrete risk looks like to a line search)."""

    version, depth_steps, schedules = 0, 1, None

    def risk_and_grad(self, heads):
        r = 1.0 + 0.5 * np.sum(heads.flat() ** 2)
        return RiskResult(r, np.array([r]), heads.with_flat(-heads.flat()))


@pytest.mark.parametrize("scheme", ["explicit", "implicit"])
def test_training_stops_where_no_step_lowers_the_risk_and_says_so(scheme):
    """No trial point lowers the risk: training stops there, naming the gradient norm, instead of
    accepting a worse point."""
    heads = Heads.random(1, 2, 1, 1, 1.0, 3)
    rec = TrainRecord()
    state = train(_Uphill(), TrainSpec(steps=5, lr=0.5, scheme=scheme, inner_steps=3),
                  TrainState(0, heads), heads, rec)
    assert state.step == 0 and not rec.risk and np.array_equal(state.heads.flat(), heads.flat())
    gnorm = np.linalg.norm(heads.flat())
    assert "lowers the risk" in state.message and state.message.endswith(f"|grad| {gnorm:.3g}")


def test_run_prints_every_long_step_and_progress_inside_it(tmp_path, monkeypatch, capsys):
    """A clock that ticks 0.5 s per reading makes every step long: each gets its line, though a line from
    inside the step came just before it."""
    case_file = tmp_path / "case.toml"
    case_file.write_text(_implicit(_text(CASE, 3, (tmp_path / "x.h5").as_posix()), inner_steps=12))
    clock = itertools.count()
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: 0.5 * next(clock))
    assert main(["run", str(case_file), "--no-plot"]) == 0
    err = capsys.readouterr().err
    assert all(f"train step {n} taken from risk" in err for n in (1, 2, 3)), err
    assert "under way" in err
