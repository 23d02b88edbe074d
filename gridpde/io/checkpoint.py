"""Training records and checkpoints in the result file.

Layout (dimension names for xarray; ``step`` rows are the state before each
step, a ``checkpoint`` row the heads after that many steps):

    /train/step, /train/risk, /train/grad_norm, /train/lr, /train/w_c,
    /train/seconds, /train/evaluations, /train/depth_steps  (step,)
    /train/risk_prompt                              (step, prompt)
    /train/checkpoint_step                          (checkpoint,)
    /train/heads/Q, K (checkpoint, layer, head, head_dim, dim); V (..., dim, dim2)
    /checkpoint/Q, K, V, step  the heads to resume from
    /checkpoint/schedules      (prompt, layer) grid depth steps the risk follows

The series are appended at every checkpoint (:class:`gridpde.io.append.ResultWriter`:
to a spare copy renamed onto the file), so the last checkpoint survives a kill -9.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from gridpde.errors import CaseError
from gridpde.heads import HEAD_ARRAYS, Heads
from gridpde.io.results import HEAD_DIMS
from gridpde.train.flow import TrainRecord, TrainState

_SERIES = ("step", "risk", "grad_norm", "lr", "w_c", "seconds", "evaluations", "depth_steps")
_COUNTS = ("step", "evaluations", "depth_steps")


def train_datasets(state: TrainState, record: TrainRecord, prompts: int) -> dict:
    """The datasets of a training run, for ``write_result(extra=...)``."""
    out = {f"train/{name}": (np.asarray(getattr(record, name), float), ("step",)) for name in _SERIES}
    for name in _COUNTS:
        out[f"train/{name}"] = (np.asarray(getattr(record, name), np.int64), ("step",))
    rp = np.asarray(record.risk_prompt, float).reshape(len(record.step), prompts)
    out["train/risk_prompt"] = (rp, ("step", "prompt"))
    out["train/checkpoint_step"] = (np.asarray(record.checkpoint_step, np.int64), ("checkpoint",))
    for k, now in state.heads.arrays().items():
        stack = np.asarray([getattr(h, k) for h in record.checkpoint_heads], float)
        stack = stack.reshape(len(record.checkpoint_heads), *now.shape)
        out[f"train/heads/{k}"] = (stack, ("checkpoint", *HEAD_DIMS[k]))
        out[f"checkpoint/{k}"] = (now, HEAD_DIMS[k])
    out["checkpoint/step"] = (np.int64(state.step), ())
    if state.schedules is not None:
        out["checkpoint/schedules"] = (np.asarray(state.schedules, np.int64), ("prompt", "layer"))
    return out


def load_checkpoint(path: str | Path, case_text: str, scale_scores: bool) -> tuple[TrainState, TrainRecord]:
    """The state and records saved in ``path`` by an earlier run of the same case."""
    path = Path(path)
    if not path.exists():
        raise CaseError(f"--resume: {path} does not exist (nothing to resume)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise CaseError(f"--resume: {path} is not a readable HDF5 file ({exc})") from None
    with f:
        if "checkpoint" not in f:
            raise CaseError(f"--resume: {path} holds no training checkpoint")
        if str(f.attrs.get("case", "")) != case_text:
            raise CaseError(f"--resume: the case file changed since {path} was written; "
                            "resume needs the same case")
        heads = Heads(*(f["checkpoint"][k][()] for k in HEAD_ARRAYS), scale_scores)
        state = TrainState(int(f["checkpoint"]["step"][()]), heads)
        if "schedules" in f["checkpoint"]:
            state.schedules = f["checkpoint"]["schedules"][()].tolist()
        t = f["train"]
        rec = TrainRecord()
        for name in _SERIES:
            setattr(rec, name, list(t[name][()]))
        for name in _COUNTS:
            setattr(rec, name, [int(s) for s in getattr(rec, name)])
        rec.risk_prompt = list(t["risk_prompt"][()])
        rec.checkpoint_step = [int(s) for s in t["checkpoint_step"][()]]
        rec.checkpoint_heads = [
            Heads(*(t["heads"][k][i] for k in HEAD_ARRAYS), scale_scores) for i in range(len(rec.checkpoint_step))
        ]
    rec.truncate(state.step)
    return state, rec
