"""Run many trainer command lines fast: import once, then fork one process per command line.

Each child is a real process running ``kerjepa.training.loop.main(argv)`` exactly as ``python -m
kerjepa.train`` does (exit status, stdout, stderr, signals; an uncaught exception prints its traceback
like the interpreter would), without paying the few seconds of imports per command.

Protocol: one JSON object per line on stdin, ``{"argv": [...], "cwd": DIR, "env": {...},
"signal_at_step": [k, signum], "signal_in": [name, signum], "poison_at_step": k, "nan_after": k}``; one JSON object per line on stdout,
``{"rc": int, "stdout": str, "stderr": str}`` (rc is -signum for a process killed by a signal).
``signal_at_step`` sends the signal to the child itself inside its k-th optimizer step (1-based), or
to its process group with ``"signal_group": true`` (as a terminal's Ctrl-C or a scheduler does);
``poison_at_step`` writes a NaN into a weight right after the k-th optimizer step; ``signal_in``:
[name, signum] signals the child right after it called ``kerjepa.training.loop.<name>``;
``nan_after`` makes the regularizer return NaN from its k-th call on (the dry run counts as a call).
"""
import json
import os
import sys
import tempfile
import traceback

import sklearn.datasets
import timm  # noqa: F401
import torch
import torchvision.datasets  # noqa: F401
import torchvision.transforms.v2  # noqa: F401

import kerjepa
from kerjepa.training import loop

sklearn.datasets.load_digits()  # warm the file cache


def _patch(request):
    if "signal_at_step" in request or "poison_at_step" in request:
        signal_at, signum = request.get("signal_at_step", (0, 0))
        poison_at, calls, step = request.get("poison_at_step", 0), [0], torch.optim.AdamW.step

        def faulty_step(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == signal_at:  # to the process, or to its whole group (DataLoader workers too)
                os.killpg(0, signum) if request.get("signal_group") else os.kill(os.getpid(), signum)
            out = step(self, *args, **kwargs)
            if calls[0] == poison_at:  # an update that turns a weight non-finite (the loss was still finite)
                with torch.no_grad():
                    self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
            return out
        torch.optim.AdamW.step = faulty_step
    if "signal_in" in request:  # signal the process from inside loop.<name>, before training starts
        name, signum = request["signal_in"]
        original = getattr(loop, name)

        def signalling(*args, **kwargs):
            out = original(*args, **kwargs)
            os.kill(os.getpid(), signum)
            return out
        setattr(loop, name, signalling)
    if "nan_after" in request:
        k, build = request["nan_after"], kerjepa.regularizer

        def nan_regularizer(**spec):
            reg, calls = build(**spec), [0]
            forward = reg.forward

            def nan_forward(z):
                calls[0] += 1
                return forward(z) * (float("nan") if calls[0] >= k else 1.0)
            reg.forward = nan_forward
            return reg
        kerjepa.regularizer = nan_regularizer


def _child(request, out_path, err_path):
    os.setpgrp()  # its own process group, which a signal to the group reaches, and nothing else
    os.chdir(request.get("cwd", os.getcwd()))
    os.environ.update(request.get("env", {}))
    for fd, path in ((1, out_path), (2, err_path)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    code = 1
    try:
        _patch(request)
        code = loop.main(request["argv"])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve():
    for line in sys.stdin:
        request = json.loads(line)
        with tempfile.TemporaryDirectory() as tmp:
            out_path, err_path = os.path.join(tmp, "out"), os.path.join(tmp, "err")
            pid = os.fork()
            if pid == 0:
                _child(request, out_path, err_path)
            _, status = os.waitpid(pid, 0)
            rc = os.waitstatus_to_exitcode(status)
            with open(out_path) as out, open(err_path) as err:
                reply = {"rc": rc, "stdout": out.read(), "stderr": err.read()}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
