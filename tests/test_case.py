"""Tests for gridpde.casefile: a valid case parses, every bad input names its key."""

import numpy as np
import pytest

from gridpde.casefile import load_case, parse_case
from gridpde.errors import CaseError
from gridpde.heads import Heads
from gridpde.prompts import GaussianPrompt, MixturePrompt, TokensPrompt, UniformPrompt
from gridpde.spec import Case

np.seterr(all="raise", under="ignore")

MODEL = """
[model]
layers = 1
heads = 2
head_dim = 2
Q = [[[[1, 0], [0, 1]], [[0.5, 0], [0, 0.5]]]]
K = [[[[1, 0], [0, 1]], [[0, 1], [1, 0]]]]
V = [[[[-1, 0], [0, -1]], [[0, 1], [-1, 0]]]]
"""

CASE = (
    """
dim = 2

[grid]
lower = [-6, -6.0]
upper = [6, 6]
cells = [64, 32]
"""
    + MODEL
    + """
[[prompts]]
kind = "gaussian"
mean = [0, 0.5]
cov = [[1, 0.2], [0.2, 2]]

[[prompts]]
kind = "mixture"
weights = [1, 3]
means = [[-1, 0], [1, 0]]
covs = [[[1, 0], [0, 1]], [[0.5, 0], [0, 0.5]]]

[[prompts]]
kind = "uniform"
lower = [-1, -2]
upper = [1, 2]

[[prompts]]
kind = "tokens"
points = [[0, 0], [1, 1], [2, 0]]
weights = [1, 1, 2]

[solver]
method = "grid"
scheme = "upwind"
limiter = "minmod"
time = "ssprk2"
cfl = 1
mass_tol = 1e-8
seed = 3

[output]
path = "runs/test.h5"
snapshots = 3
plot = false
"""
)


def test_valid_case_parses():
    case = parse_case(CASE, source="mem.toml")
    assert isinstance(case, Case)
    assert case.dim == 2 and case.text == CASE and case.source == "mem.toml"
    assert case.grid.lower == (-6.0, -6.0) and case.grid.upper == (6.0, 6.0)
    assert case.grid.cells == (64, 32)
    m = case.heads
    assert (m.layers, m.width, m.head_dim, m.scale_scores) == (1, 2, 2, False)
    assert m.Q.shape == m.K.shape == m.V.shape == (1, 2, 2, 2)
    assert m.Q.dtype == np.float64 and not m.Q.flags.writeable
    np.testing.assert_array_equal(m.V[0, 1], [[0, 1], [-1, 0]])

    gauss, mix, uni, tok = case.prompts
    assert isinstance(gauss, GaussianPrompt) and gauss.kind == "gaussian"
    np.testing.assert_array_equal(gauss.cov, [[1, 0.2], [0.2, 2]])
    assert isinstance(mix, MixturePrompt)
    np.testing.assert_allclose(mix.weights, [0.25, 0.75], rtol=1e-15)
    assert mix.means.shape == (2, 2) and mix.covs.shape == (2, 2, 2)
    assert isinstance(uni, UniformPrompt)
    np.testing.assert_array_equal(uni.upper, [1, 2])
    assert isinstance(tok, TokensPrompt)
    np.testing.assert_allclose(tok.weights, [0.25, 0.25, 0.5], rtol=1e-15)
    for p in case.prompts:
        for arr in vars(p).values():
            if isinstance(arr, np.ndarray):
                assert arr.dtype == np.float64 and not arr.flags.writeable

    s = case.solver
    assert (s.method, s.scheme, s.limiter, s.time) == ("grid", "upwind", "minmod", "ssprk2")
    assert s.cfl == 1.0 and s.mass_tol == 1e-8 and s.seed == 3
    assert s.quadrature == "deconvolved" and s.tokens == 4096  # defaults
    assert (case.output.path, case.output.snapshots, case.output.plot) == ("runs/test.h5", 3, False)


def _with_model(model: str) -> str:
    return CASE.replace(MODEL, model)


def test_heads_file_relative_to_case(tmp_path):
    Q, K, V = Heads.random(2, 1, 3, 2, scale=1.0, seed=5).arrays().values()
    np.savez(tmp_path / "heads.npz", Q=Q, K=K, V=V)
    path = tmp_path / "case.toml"
    path.write_text(
        _with_model('[model]\nlayers = 2\nheads = 1\nhead_dim = 3\nheads_file = "heads.npz"\n')
    )
    case = load_case(path)
    assert case.source == str(path)
    np.testing.assert_array_equal(case.heads.Q, Q)
    np.testing.assert_array_equal(case.heads.V, V)
    assert not case.heads.K.flags.writeable


def test_heads_file_missing_or_incomplete(tmp_path):
    text = _with_model('[model]\nlayers = 1\nheads = 1\nhead_dim = 1\nheads_file = "h.npz"\n')
    with pytest.raises(CaseError, match=r"model\.heads_file"):
        parse_case(text, base_dir=tmp_path)
    np.savez(tmp_path / "h.npz", Q=np.ones((1, 1, 1, 2)), K=np.ones((1, 1, 1, 2)))
    with pytest.raises(CaseError, match=r"model\.heads_file.*V"):
        parse_case(text, base_dir=tmp_path)
    np.savez(tmp_path / "h.npz", Q=np.ones((1, 1, 1, 2)), K=np.ones((1, 1, 1, 2)), V=np.ones(3))
    with pytest.raises(CaseError, match=r"model\.heads_file\[V\]"):
        parse_case(text, base_dir=tmp_path)
    with open(tmp_path / "h.npz", "wb") as f:
        np.save(f, np.ones(3))  # a single array, not an archive
    with pytest.raises(CaseError, match=r"model\.heads_file.*single array"):
        parse_case(text, base_dir=tmp_path)


def test_random_init_matches_heads_random():
    text = _with_model(
        "[model]\nlayers = 3\nheads = 2\nhead_dim = 1\nscale_scores = true\n"
        "init = { scale = 0.5, seed = 4 }\n"
    )
    model = parse_case(text).heads
    assert model.scale_scores
    expected = Heads.random(3, 2, 1, 2, 0.5, 4).arrays().values()
    for got, want in zip((model.Q, model.K, model.V), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_heads_without_leading_unit_axes():
    # L = 1: (M, k, d) and (M, d, d) gain the layer axis
    text = _with_model(
        "[model]\nlayers = 1\nheads = 2\nhead_dim = 1\n"
        "Q = [[[1, 2]], [[3, 4]]]\nK = [[[1, 0]], [[0, 1]]]\n"
        "V = [[[1, 0], [0, 1]], [[2, 0], [0, 2]]]\n"
    )
    model = parse_case(text).heads
    assert model.Q.shape == (1, 2, 1, 2) and model.V.shape == (1, 2, 2, 2)
    np.testing.assert_array_equal(model.Q[0, 1, 0], [3, 4])


def test_one_dimensional_conveniences():
    text = """
dim = 1
[model]
layers = 1
heads = 1
head_dim = 1
Q = [[1]]
K = [[1]]
V = [[-1]]
[[prompts]]
kind = "gaussian"
mean = [0]
cov = 2
[[prompts]]
kind = "mixture"
weights = [1, 1]
means = [[-1], [1]]
covs = [0.5, 0.25]
[[prompts]]
kind = "tokens"
points = [0, 1, 2, 3]
[solver]
method = "particles"
integrator = "euler"
tokens = 100
init = "sample"
"""
    case = parse_case(text)
    assert case.grid is None
    assert case.heads.Q.shape == (1, 1, 1, 1)
    gauss, mix, tok = case.prompts
    np.testing.assert_array_equal(gauss.cov, [[2.0]])
    np.testing.assert_array_equal(mix.covs, [[[0.5]], [[0.25]]])
    assert tok.points.shape == (4, 1)
    np.testing.assert_array_equal(tok.weights, np.full(4, 0.25))


def _sub(old: str, new: str) -> str:
    assert old in CASE, old
    return CASE.replace(old, new, 1)


LOSS = '\n[loss]\nkind = "mmd"\nsigma = 0.5\n'
TEACHER = "[loss.teacher]\ninit = { scale = 0.5, seed = 7 }\n"
TARGET = "target = { kind = \"tokens\", points = [[1, 1], [2, 2]], weights = [1, 3] }"


def _with_targets(skip: int | None = None) -> str:
    """CASE with a tokens target on every prompt but number ``skip``."""
    parts = CASE.split("[[prompts]]\n")
    for i in range(1, len(parts)):
        if i - 1 != skip:
            parts[i] = parts[i].replace("\n", "\n" + TARGET + "\n", 1)
    return "[[prompts]]\n".join(parts)


def test_mmd_with_teacher_init():
    text = CASE + LOSS + TEACHER + "[train]\nsteps = 0\n"
    case = parse_case(text)
    loss = case.loss
    assert (loss.kind, loss.sigma, loss.centre) == ("mmd", 0.5, None)
    assert isinstance(loss.teacher, Heads)
    expected = Heads.random(1, 2, 2, 2, 0.5, 7).arrays().values()
    for got, want in zip((loss.teacher.Q, loss.teacher.K, loss.teacher.V), expected, strict=True):
        assert got.shape == want.shape and not got.flags.writeable
        np.testing.assert_array_equal(got, want)
    assert case.targets == (None, None, None, None)
    assert case.train.steps == 0 and case.train.lr == 0.1  # lr default


def test_teacher_inline_and_from_file(tmp_path):
    inline = MODEL.replace("[model]\nlayers = 1\nheads = 2\nhead_dim = 2\n", "[loss.teacher]\n")
    case = parse_case(CASE + LOSS + inline)
    np.testing.assert_array_equal(case.loss.teacher.Q, case.heads.Q)
    np.testing.assert_array_equal(case.loss.teacher.V, case.heads.V)
    Q, K, V = Heads.random(1, 2, 2, 2, scale=1.0, seed=2).arrays().values()
    np.savez(tmp_path / "teacher.npz", Q=Q, K=K, V=V)
    text = CASE + LOSS + '[loss.teacher]\nheads_file = "teacher.npz"\n'
    case = parse_case(text, base_dir=tmp_path)
    np.testing.assert_array_equal(case.loss.teacher.K, K)


def test_potential_with_centre():
    case = parse_case(CASE + '\n[loss]\nkind = "potential"\ncentre = [1, -2.5]\n')
    assert case.loss.kind == "potential" and case.loss.teacher is None
    np.testing.assert_array_equal(case.loss.centre, [1.0, -2.5])
    assert case.loss.centre.dtype == np.float64 and not case.loss.centre.flags.writeable
    assert case.targets == (None,) * 4
    default = parse_case(CASE + '\n[loss]\nkind = "potential"\n').loss.centre
    np.testing.assert_array_equal(default, [0.0, 0.0])


def test_per_prompt_targets():
    case = parse_case(_with_targets() + LOSS)
    assert case.loss.teacher is None and len(case.targets) == 4
    for target in case.targets:
        assert isinstance(target, TokensPrompt)
        np.testing.assert_array_equal(target.points, [[1, 1], [2, 2]])
        np.testing.assert_allclose(target.weights, [0.25, 0.75], rtol=1e-15)
    # with a teacher, targets are optional per prompt; any prompt kind works
    gauss = 'target = { kind = "gaussian", mean = [1, 0], cov = [[2, 0], [0, 2]] }'
    text = _sub('kind = "uniform"', 'kind = "uniform"\n' + gauss) + LOSS + TEACHER
    case = parse_case(text)
    assert case.targets[0] is None and case.targets[3] is None
    assert isinstance(case.targets[2], GaussianPrompt)
    np.testing.assert_array_equal(case.targets[2].cov, [[2, 0], [0, 2]])


def test_train_table():
    text = (
        CASE + LOSS + TEACHER + "[train]\nsteps = 20\nlr = 0.05\ncheckpoint_every = 5\n"
        "backtrack = false\nrisk_tol = 1e-6\ngrad_tol = 1e-8\ntime_limit = 60\n"
    )
    t = parse_case(text).train
    assert (t.steps, t.lr, t.checkpoint_every, t.backtrack) == (20, 0.05, 5, False)
    assert (t.risk_tol, t.grad_tol, t.time_limit) == (1e-6, 1e-8, 60.0)
    assert isinstance(t.time_limit, float)
    case = parse_case(CASE)
    assert case.loss is None and case.train is None and case.targets == (None,) * 4
    assert case.solver.adjoint_memory_mb == 2048.0


BAD = [
    ("unknown top-level key", "colour = 1\n" + CASE, "colour"),
    ("unknown key in output", CASE + "\ncolour = 1\n", "output.colour"),
    ("unknown key in grid", _sub("cells = [64, 32]", "cells = [64, 32]\ncelss = 3"), "grid.celss"),
    ("unknown key in prompt", _sub('kind = "uniform"', 'kind = "uniform"\nmean = [0, 0]'),
     "prompts[2].mean"),
    ("2x3 cov", _sub("cov = [[1, 0.2], [0.2, 2]]", "cov = [[1, 0, 0], [0, 1, 0]]"),
     "prompts[0].cov"),
    ("non-symmetric cov", _sub("cov = [[1, 0.2], [0.2, 2]]", "cov = [[1, 0.2], [0.3, 2]]"),
     "prompts[0].cov"),
    ("non-PD cov", _sub("cov = [[1, 0.2], [0.2, 2]]", "cov = [[1, 2], [2, 1]]"), "prompts[0].cov"),
    ("non-PD mixture cov", _sub("covs = [[[1, 0], [0, 1]], [[0.5, 0], [0, 0.5]]]",
                                "covs = [[[1, 0], [0, 1]], [[0.5, 0], [0, -0.5]]]"),
     "prompts[1].covs[1]"),
    ("negative cells", _sub("cells = [64, 32]", "cells = [64, -3]"), "grid.cells"),
    ("one cell", _sub("cells = [64, 32]", "cells = [64, 1]"), "grid.cells"),
    ("cells of wrong length", _sub("cells = [64, 32]", "cells = [64]"), "grid.cells"),
    ("fractional cells", _sub("cells = [64, 32]", "cells = [64, 32.5]"), "grid.cells"),
    ("lower >= upper", _sub("upper = [6, 6]", "upper = [6, -6]"), "grid.upper"),
    ("uniform lower >= upper", _sub("upper = [1, 2]", "upper = [-1, 2]"), "prompts[2].upper"),
    ("cfl = 0", _sub("cfl = 1", "cfl = 0"), "solver.cfl"),
    ("cfl = 1.5", _sub("cfl = 1", "cfl = 1.5"), "solver.cfl"),
    ("cfl string", _sub("cfl = 1", 'cfl = "0.4"'), "solver.cfl"),
    ("cfl bool", _sub("cfl = 1", "cfl = true"), "solver.cfl"),
    ("bad literal", _sub('scheme = "upwind"', 'scheme = "weno"'), "solver.scheme"),
    ("snapshots < 2", _sub("snapshots = 3", "snapshots = 1"), "output.snapshots"),
    ("Q of wrong shape", _sub("Q = [[[[1, 0], [0, 1]], [[0.5, 0], [0, 0.5]]]]",
                              "Q = [[[[1, 0], [0, 1]]]]"), "model.Q"),
    ("V of wrong shape", _sub("V = [[[[-1, 0], [0, -1]], [[0, 1], [-1, 0]]]]",
                              "V = [[[[-1, 0, 0], [0, -1, 0]], [[0, 1, 0], [-1, 0, 0]]]]"),
     "model.V"),
    ("ragged K", _sub("K = [[[[1, 0], [0, 1]], [[0, 1], [1, 0]]]]",
                      "K = [[[[1, 0], [0]], [[0, 1], [1, 0]]]]"), "model.K"),
    ("K missing", _sub("K = [[[[1, 0], [0, 1]], [[0, 1], [1, 0]]]]\n", ""), "model.K"),
    ("two head sources", _sub("layers = 1", "layers = 1\ninit = { scale = 1.0 }"), "model"),
    ("layers = 0", _sub("layers = 1", "layers = 0"), "model.layers"),
    ("wrong kind", _sub('kind = "uniform"', 'kind = "box"'), "prompts[2].kind"),
    ("zero mixture weight", _sub("weights = [1, 3]", "weights = [0, 3]"), "prompts[1].weights"),
    ("negative token weight", _sub("weights = [1, 1, 2]", "weights = [1, -1, 2]"),
     "prompts[3].weights"),
    ("string in mean", _sub("mean = [0, 0.5]", 'mean = [0, "a"]'), "prompts[0].mean"),
    ("target without points",
     _sub('kind = "tokens"', 'kind = "tokens"\ntarget = { kind = "tokens" }') + LOSS,
     "prompts[3].target.points"),
    ("target without loss", _sub('kind = "tokens"', 'kind = "tokens"\n' + TARGET),
     "prompts[3].target: needs a [loss] table"),
    ("loss without targets or teacher", CASE + LOSS, "prompts[0].target is missing"),
    ("loss with some targets missing", _with_targets(skip=2) + LOSS, "prompts[2].target"),
    ("target with potential", _with_targets() + '\n[loss]\nkind = "potential"\n',
     "prompts[0].target"),
    ("sigma = 0", _with_targets() + LOSS.replace("sigma = 0.5", "sigma = 0"), "loss.sigma"),
    ("sigma < 0", _with_targets() + LOSS.replace("sigma = 0.5", "sigma = -1"), "loss.sigma"),
    ("bad loss kind", _with_targets() + LOSS.replace('"mmd"', '"wasserstein"'), "loss.kind"),
    ("unknown key in loss", _with_targets() + LOSS + "sgima = 1\n", "loss.sgima"),
    ("centre with mmd", _with_targets() + LOSS + "centre = [0, 0]\n", "loss.centre"),
    ("sigma with potential", CASE + '\n[loss]\nkind = "potential"\nsigma = 1\n', "loss.sigma"),
    ("teacher with potential", CASE + '\n[loss]\nkind = "potential"\n' + TEACHER,
     "loss.teacher"),
    ("centre of wrong length", CASE + '\n[loss]\nkind = "potential"\ncentre = [1]\n',
     "loss.centre"),
    ("unknown key in teacher", CASE + LOSS + TEACHER + "layer = 1\n", "loss.teacher.layer"),
    ("teacher layers = 0", CASE + LOSS + TEACHER + "layers = 0\n", "loss.teacher.layers"),
    ("teacher without heads", CASE + LOSS + "[loss.teacher]\n", "loss.teacher"),
    ("teacher of wrong shape", CASE + LOSS + "[loss.teacher]\nQ = [[[[1, 0], [0, 1]]]]\n"
     "K = [[[[1, 0], [0, 1]]]]\nV = [[[[1, 0], [0, 1]]]]\n", "loss.teacher.Q"),
    ("teacher init scale < 0", CASE + LOSS + "[loss.teacher]\ninit = { scale = -1 }\n",
     "loss.teacher.init.scale"),
    ("train without loss", CASE + "\n[train]\nsteps = 3\n", "[train]: needs a [loss] table"),
    ("unknown key in train", CASE + LOSS + TEACHER + "[train]\nstpes = 3\n", "train.stpes"),
    ("lr = 0", CASE + LOSS + TEACHER + "[train]\nlr = 0\n", "train.lr"),
    ("steps < 0", CASE + LOSS + TEACHER + "[train]\nsteps = -1\n", "train.steps"),
    ("checkpoint_every = 0", CASE + LOSS + TEACHER + "[train]\ncheckpoint_every = 0\n",
     "train.checkpoint_every"),
    ("backtrack not bool", CASE + LOSS + TEACHER + "[train]\nbacktrack = 1\n",
     "train.backtrack"),
    ("negative time_limit", CASE + LOSS + TEACHER + "[train]\ntime_limit = -1\n",
     "train.time_limit"),
    ("unknown train scheme", CASE + LOSS + TEACHER + "[train]\nscheme = \"adam\"\n", "train.scheme"),
    ("inner_steps = 0", CASE + LOSS + TEACHER + "[train]\ninner_steps = 0\n", "train.inner_steps"),
    ("inner_tol = 1", CASE + LOSS + TEACHER + "[train]\ninner_tol = 1\n", "train.inner_tol"),
    ("adjoint_memory_mb = 0", _sub("seed = 3", "seed = 3\nadjoint_memory_mb = 0"),
     "solver.adjoint_memory_mb"),
    ("missing dim", _sub("dim = 2", ""), "dim"),
    ("dim = 4", _sub("dim = 2", "dim = 4"), "dim"),
    ("TOML syntax error", _sub("cells = [64, 32]", "cells = [64, 32"), "mem.toml"),
    ("grid missing", _sub("[grid]\nlower = [-6, -6.0]\nupper = [6, 6]\ncells = [64, 32]\n", ""),
     "grid"),
    ("no prompts", CASE.split("[[prompts]]")[0] + '[solver]\nmethod = "grid"\n', "prompts"),
]


@pytest.mark.parametrize(("text", "key"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_names_its_key(text, key):
    with pytest.raises(CaseError) as info:
        parse_case(text, source="mem.toml")
    message = str(info.value)
    assert key in message
    assert "\n" not in message


def test_error_message_format():
    with pytest.raises(CaseError) as info:
        parse_case(_sub("cells = [64, 32]", "cells = [64, -3]"))
    assert str(info.value) == (
        "grid.cells = [64, -3]: expected integers >= 2, one per dimension (dim = 2)"
    )
    with pytest.raises(CaseError, match=r"line \d+"):
        parse_case(_sub("cells = [64, 32]", "cells = [64, 32"), source="mem.toml")


def test_missing_case_file(tmp_path):
    with pytest.raises(CaseError, match="nope.toml"):
        load_case(tmp_path / "nope.toml")


@pytest.mark.parametrize("key", ["layers", "heads", "head_dim"])
@pytest.mark.parametrize("value", [10**9, 2**62])
def test_huge_model_sizes_are_refused_before_any_array_is_made(key, value):
    """layers = 1e9 hung in the fuzz table, 2**62 ended in a numpy ValueError; now one line, exit 2."""
    from gridpde.builders import case_document, dump_case

    doc = case_document(cells=16)
    doc["model"][key] = value
    with pytest.raises(CaseError, match="head entries"):
        parse_case(dump_case(doc))
