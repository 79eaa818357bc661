"""The run folder: checkpoints, the resume rules, and what happens to a folder that already holds a run.

A run folder holds ``config.yaml``, ``metrics.jsonl``, ``checkpoint.pt`` and, once the run is done,
``results.json``. Everything the trainer needs to decide about that folder lives here:

* :func:`prepare_run_dir` refuses a folder that holds a run unless the run is resumed or explicitly
  replaced, and turns a path that cannot be a folder into one clear message.
* :func:`save_checkpoint` writes atomically, and only a state whose tensors are all finite
  (:func:`first_nonfinite`); :func:`load_checkpoint` reads with ``weights_only=True`` and reports a
  truncated, empty, foreign or unsafe file as a :class:`CheckpointError` naming the path.
* :func:`resume_config` says which config keys may differ on resume (:data:`RESUMABLE_CHANGES`, which do
  not change the trajectory, and, with ``recover=True``, :data:`RECOVERY_CHANGES`: the learning rate,
  lambda and gradient clipping, the knobs that bring a diverged run back).
* :func:`repair_metrics` drops the records written after the checkpoint and a line torn by a kill.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import warnings
from pathlib import Path

import torch

from .config import Config, ConfigError

__all__ = ["CHECKPOINT", "METRICS", "RESULTS", "CONFIG", "RESUMABLE_CHANGES", "RECOVERY_CHANGES",
           "CheckpointError", "RunFolderError", "save_checkpoint", "load_checkpoint", "first_nonfinite",
           "resume_config", "prepare_run_dir", "repair_metrics", "write_text", "gather_rng", "restore_rng",
           "load_state", "optimizer_tensors"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
CONFIG = "config.yaml"
#: Files (and the TensorBoard folder) that make a folder a run folder; ``overwrite=True`` deletes these only.
RUN_FILES = (CHECKPOINT, METRICS, RESULTS, CONFIG, "tensorboard")
#: Keys that may change when a run is resumed (they do not change the trajectory).
RESUMABLE_CHANGES = ("max_steps", "num_workers", "progress", "tensorboard", "log_every", "ckpt_every",
                     "eval_batch_size", "data_root", "download", "check_images")
#: Keys that may change on resume only when asked for (``--recover``): they change the trajectory from the
#: checkpoint on, and the change is recorded in metrics.jsonl and in the checkpoint.
RECOVERY_CHANGES = ("lr", "lam", "grad_clip")
#: Entries every kerjepa checkpoint holds.
REQUIRED_KEYS = ("config", "step", "model", "regularizer", "optimizer", "results", "rng")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or that does not belong to this run; the message names the file."""


class RunFolderError(RuntimeError):
    """A run folder that cannot be used (it holds another run, it is a file, it cannot be written)."""


# ---------------------------------------------------------------------------------------------
# Writing

def write_text(path: Path, text: str) -> None:
    """Write a small text file of the run folder atomically, a failure reported with the path."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        raise RunFolderError(f"cannot write {path}: {err.strerror or err}") from None


def save_checkpoint(path: Path, state: dict) -> None:
    """Write atomically: a temporary file in the same folder, then os.replace (a kill never leaves half a file).

    Raises:
        RunFolderError: the write failed (disk full, permissions); the previous checkpoint is untouched.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:  # through a Python file, so a failed write is an OSError that says why
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise RunFolderError(f"cannot write the checkpoint {path}: {err.strerror or err}; the previous "
                             f"checkpoint (if any) is untouched") from None


def first_nonfinite(named_tensors) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None.

    One host sync per device (Adam's step counts live on the CPU next to CUDA weights).
    """
    named = [(n, t) for n, t in named_tensors if torch.is_tensor(t) and t.is_floating_point() and t.numel()]
    by_device = {}
    for i, (_, t) in enumerate(named):
        by_device.setdefault(t.device, []).append(i)
    bad = []
    for indices in by_device.values():
        finite = torch.stack([torch.isfinite(named[i][1]).all() for i in indices]).cpu()
        bad += [i for i, ok in zip(indices, finite.tolist()) if not ok]
    return named[min(bad)][0] if bad else None


def optimizer_tensors(opt: torch.optim.Optimizer):
    """(name, tensor) of every optimizer state entry (Adam's moments), for :func:`first_nonfinite`."""
    for i, state in enumerate(opt.state.values()):
        for key, value in state.items():
            yield f"optimizer state {i}.{key}", value


def gather_rng(dist) -> dict:
    """``{"rng": [state of rank 0, state of rank 1, ...]}``: every rank's CPU (and CUDA) generator state."""
    state = {"cpu": torch.get_rng_state()}
    if dist.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dist.device)
    if dist.world_size == 1:
        return {"rng": [state]}
    states = [None] * dist.world_size
    torch.distributed.all_gather_object(states, {k: v.cpu() for k, v in state.items()})
    return {"rng": states}


def restore_rng(states: list, dist, seed: int, step: int) -> None:
    """Put back this rank's generator state; with another number of processes, reseed (reproducible, not identical)."""
    if len(states) != dist.world_size:
        torch.manual_seed(seed + dist.rank + 7919 * step)
        return
    torch.set_rng_state(states[dist.rank]["cpu"])
    if dist.device.type == "cuda" and "cuda" in states[dist.rank]:
        torch.cuda.set_rng_state(states[dist.rank]["cuda"], dist.device)


# ---------------------------------------------------------------------------------------------
# Reading

def load_checkpoint(path) -> dict:
    """Load a kerjepa checkpoint with ``weights_only=True`` (tensors and builtins only).

    Raises:
        CheckpointError: missing, empty, truncated or corrupted, holding objects other than tensors and
            builtins (a pickle that could run code is refused, never retried unsafely), or not a kerjepa
            checkpoint (entries missing). The message names the path.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint to resume from at {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file, so it cannot be a checkpoint")
    if path.stat().st_size == 0:
        raise CheckpointError(f"the checkpoint {path} is empty (0 bytes); it cannot be resumed")
    try:
        with warnings.catch_warnings():  # the unpickler warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path} holds objects other than tensors and builtins, so it is not a kerjepa "
                              f"checkpoint; it was not loaded (loading it could run code)") from None
    except OSError as err:
        raise CheckpointError(f"cannot read the checkpoint {path}: {err.strerror or err}") from None
    except Exception as err:  # torch's zip reader raises RuntimeError, EOFError, KeyError... on damaged files
        raise CheckpointError(f"the checkpoint {path} is truncated or corrupted ({type(err).__name__}); it "
                              f"cannot be resumed") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
        raise CheckpointError(f"{path} is not a kerjepa checkpoint (it lacks {missing})")
    if not isinstance(state["config"], dict) or not isinstance(state["step"], int):
        raise CheckpointError(f"{path} is not a kerjepa checkpoint (its config or step is malformed)")
    try:
        Config.from_dict(state["config"])
    except ConfigError as err:
        raise CheckpointError(f"the checkpoint {path} holds a config this version cannot use: {err}") from None
    return state


def load_state(module, state: dict, what: str, path: Path) -> None:
    """``module.load_state_dict(state)``, a mismatch reported as a CheckpointError naming the file."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(f"the {what} in {path} does not fit the run's model: {detail[:300]}") from None


def resume_config(saved: Config, cfg: Config, path: Path, recover: bool = False) -> tuple[Config, dict]:
    """The config a resumed run continues with, and the recovery changes {key: [old, new]} it makes.

    Args:
        saved: the checkpoint's config.
        cfg: the requested config.
        path: the checkpoint (for messages).
        recover: allow the keys of RECOVERY_CHANGES to differ.

    Raises:
        ConfigError: another preset, or keys that may not change.
    """
    if saved.preset != cfg.preset:
        raise ConfigError(f"the checkpoint {path} is a {saved.preset!r} run, not {cfg.preset!r}; resume it "
                          f"with --preset={saved.preset} or without --preset")
    allowed = RESUMABLE_CHANGES + (RECOVERY_CHANGES if recover else ())
    diff = [k for k in cfg.to_dict() if k not in allowed and getattr(saved, k) != getattr(cfg, k)]
    if diff:
        hint = ("; add --recover to resume with a new " + ", ".join(k for k in diff if k in RECOVERY_CHANGES)
                if any(k in RECOVERY_CHANGES for k in diff) and not recover else "")
        raise ConfigError(f"cannot resume {path} with a different config: {diff} differ from the checkpoint; "
                          f"only {list(allowed)} may change{hint}")
    changes = {k: [getattr(saved, k), getattr(cfg, k)] for k in RECOVERY_CHANGES
               if recover and getattr(saved, k) != getattr(cfg, k)}
    keep = {k: getattr(cfg, k) for k in RESUMABLE_CHANGES + (RECOVERY_CHANGES if recover else ())}
    return saved.replace(**keep), changes


# ---------------------------------------------------------------------------------------------
# The run folder

def _describe_run(run_dir: Path) -> str:
    parts = []
    if (run_dir / RESULTS).is_file():
        parts.append("a finished run")
    elif (run_dir / CHECKPOINT).is_file():
        parts.append("a run with a checkpoint")
    else:
        parts.append("a run without a checkpoint")
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    return f"{parts[0]} ({', '.join(found)})"


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, remove: bool = True) -> None:
    """Make sure `run_dir` can take this run; create it.

    A folder that holds a run (any of config.yaml, metrics.jsonl, checkpoint.pt, results.json) is refused
    unless the run is resumed, or replaced (``overwrite=True`` deletes those files first, nothing else, when
    `remove`; under torch.distributed only rank 0 removes).

    Raises:
        RunFolderError: a run is there, the path is a file or lies under one, or the folder is not writable.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"--out {run_dir} is a file, not a folder; choose another --out")
    for parent in run_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise RunFolderError(f"--out {run_dir} lies under {parent}, which is a file; choose another --out")
    if run_dir.is_dir() and not resume and any((run_dir / name).exists() for name in RUN_FILES):
        if not overwrite:
            raise RunFolderError(f"{run_dir} already holds {_describe_run(run_dir)}; continue it with --resume, "
                                 f"or replace it with --overwrite")
        for name in RUN_FILES if remove else ():
            target = run_dir / name
            try:
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            except OSError as err:
                raise RunFolderError(f"cannot replace the run in {run_dir}: {err.strerror or err} "
                                     f"({target})") from None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"cannot create the run folder {run_dir}: {err.strerror or err}") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunFolderError(f"the run folder {run_dir} is not writable")


def repair_metrics(path: Path, step: int, keep_final: bool) -> int:
    """Keep the records of metrics.jsonl up to `step` (a resumed run rewrites the rest); return lines dropped.

    A line that is not JSON (torn by a kill in the middle of a write) is dropped; so are the ``"final"``
    event records unless `keep_final` (a run that trains further is no longer final there).
    """
    if not path.is_file():
        return 0
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise RunFolderError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    keep, dropped = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        step_of = record.get("step", 0) if isinstance(record, dict) else math.inf
        if not isinstance(step_of, (int, float)) or step_of > step or (
                not keep_final and record.get("event") == "final"):
            dropped += 1
            continue
        keep.append(line)
    write_text(path, "".join(line + "\n" for line in keep))
    return dropped
