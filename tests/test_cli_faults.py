"""The trainer's command line under faults: bad command lines, damaged checkpoints and run folders,
broken images, divergence, SIGTERM / SIGINT. Every fault ends in one line ``kerjepa.train: error: ...``
(never a traceback) or in a recovered run.

Each command line runs in its own process (``cli_server.py`` imports once and forks per command line, so a
case costs its own work, not the imports); two cases run ``python -m kerjepa.train`` itself.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kerjepa.training import checkpoint as C
from kerjepa.training import data as kdata
from test_data import make_imagenette

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
       "MPLBACKEND": "Agg", "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
#: A tiny digits run: 22 steps per epoch, a one-block ViT; 6 steps, a checkpoint every 2.
TINY = ["--preset=digits-cpu", "--batch_size=64", "--micro_width=32", "--micro_depth=1", "--micro_heads=2",
        "--proj_hidden=64", "--proj_dim=16", "--views=2", "--epochs=4", "--max_steps=6", "--eval_init=false",
        "--final_eval=false", "--eval_every=0", "--progress=false", "--reg={kind: mmd}", "--lam=1.0",
        "--ckpt_every=2", "--log_every=1", "--drop_path=0.1"]


class Cli:
    """One cli_server process for the module; ``run(args)`` returns (exit status, stdout, stderr)."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(HERE / "cli_server.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=ENV)

    def run(self, args, cwd, **options):
        self.proc.stdin.write(json.dumps({"argv": [str(a) for a in args], "cwd": str(cwd), **options}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return reply["rc"], reply["stdout"], reply["stderr"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def cli():
    server = Cli()
    yield server
    server.close()


@pytest.fixture(scope="module")
def finished_run(cli, tmp_path_factory):
    """One finished TINY run (checkpoints at steps 2, 4, then the final one at 6), shared read-only."""
    root = tmp_path_factory.mktemp("finished")
    rc, _, err = cli.run(TINY + [f"--out={root / 'run'}"], root)
    assert rc == 0, err
    return root / "run"


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A private copy of the finished run, to damage."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / C.METRICS).read_text().splitlines()]


def ckpt(run_dir):
    return C.load_checkpoint(Path(run_dir) / C.CHECKPOINT)


def assert_one_error(rc, err, match=None):
    assert rc != 0 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kerjepa.train: error: "), err
    if match is not None:
        assert match in lines[0], lines[0]


# ------------------------------------------------------------------ a table of bad command lines

def _files(tmp):
    (tmp / "a_file").write_text("not a folder\n")
    (tmp / "list.yaml").write_text("- a list, not a mapping\n")
    (tmp / "broken.yaml").write_text("lr: [1, 2\n")
    return tmp


BAD_COMMAND_LINES = [  # (id, extra arguments (TINY first unless the list starts with "!"), text in the message)
    ("unknown-preset", ["--preset=table1/nope"], "unknown preset 'table1/nope'"),
    ("unknown-reg-kind", ["--reg.kind=wasserstein"], "reg="),
    ("negative-lambda", ["--lam=-0.5"], "finite number >= 0"),
    ("batch-size-1", ["--batch_size=1"], "batch_size must be >= 2"),
    ("heads-do-not-divide-width", ["--micro_width=30", "--micro_heads=4"], "divisible by micro_heads"),
    ("not-a-number", ["--lr=fast"], "lr must be of type float"),
    ("infinite-lr", ["--lr=.inf"], "lr must be a finite number"),
    ("lr-beyond-float32", ["--lr=1e39"], "within float32 range"),
    ("misspelt-key", ["--max_step=3"], "did you mean 'max_steps'"),
    ("flag-without-value", ["--lr"], "overrides look like --key=value"),
    ("positional", ["train"], "overrides look like --key=value"),
    ("missing-config-file", ["--config={tmp}/missing.yaml"], "does not exist"),
    ("config-file-not-a-mapping", ["--config={tmp}/list.yaml"], "must hold a mapping"),
    ("config-file-not-yaml", ["--config={tmp}/broken.yaml"], "not valid YAML"),
    ("unknown-timm-model", ["--model=vit_nonexistent"], "unknown model 'vit_nonexistent'"),
    ("negative-gamma-yaml-number", ["--reg={kind: mmd, gamma: -1e-3}"], "gamma"),
    ("batch-larger-than-data", ["--batch_size=4096"], "larger than the training set"),
    ("world-size-does-not-divide-batch", ["--batch_size=7"], "not divisible by the world size 2"),
    ("cuda-without-a-gpu", ["--device=cuda"], "no CUDA device"),
    ("imagenette-missing", ["--preset=smoke", "--data_root={tmp}/nowhere"], "ImageNette (160px) not found"),
    ("resume-without-out", ["!", "--resume"], "--resume needs --out"),
    ("resume-nothing-there", ["!", "--resume", "--out={tmp}/nothing"], "no checkpoint to resume from"),
    ("recover-without-resume", ["--recover", "--lr=1e-4"], "use it together with --resume"),
    ("out-is-a-file", ["--out={tmp}/a_file"], "is a file, not a folder"),
    ("out-under-a-file", ["--out={tmp}/a_file/run"], "which is a file"),
]


@pytest.mark.parametrize("args, message", [case[1:] for case in BAD_COMMAND_LINES],
                         ids=[case[0] for case in BAD_COMMAND_LINES])
def test_bad_command_lines_give_one_error_line(cli, tmp_path, args, message):
    if "--device=cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    _files(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    argv = args[1:] if args[:1] == ["!"] else TINY + args + ([] if any(a.startswith("--out") for a in args)
                                                             else [f"--out={tmp_path / 'run'}"])
    env = {"WORLD_SIZE": "2"} if "--batch_size=7" in args else {}
    rc, out, err = cli.run(argv, tmp_path, env=env)
    assert_one_error(rc, err, message)
    assert rc == 2
    assert not (tmp_path / "run" / C.METRICS).exists()  # nothing was trained


def test_out_that_cannot_be_created(cli, tmp_path):
    if os.geteuid() == 0:  # root writes anywhere a mode allows nothing; /sys refuses even root
        target = Path("/sys/kerjepa-run")
        if not Path("/sys").is_dir():
            pytest.skip("no read-only place to try")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "run"
    rc, _, err = cli.run(TINY + [f"--out={target}"], tmp_path)
    assert_one_error(rc, err, f"cannot create the run folder {target}")


# ------------------------------------------------------------------ a run folder that holds a run

def test_existing_run_is_refused_then_replaced_with_overwrite(cli, run_copy, tmp_path):
    before = (run_copy / C.METRICS).read_bytes()
    rc, _, err = cli.run(TINY + [f"--out={run_copy}"], tmp_path)
    assert_one_error(rc, err, "already holds a finished run")
    assert "--resume" in err and "--overwrite" in err
    assert (run_copy / C.METRICS).read_bytes() == before  # untouched
    rc, _, err = cli.run(TINY + ["--max_steps=2", f"--out={run_copy}", "--overwrite"], tmp_path)
    assert rc == 0, err
    assert [r["step"] for r in records(run_copy) if "loss" in r] == [1, 2]  # one run, not two mixed
    assert ckpt(run_copy)["step"] == 2


def test_resume_of_a_finished_run_adds_nothing(cli, run_copy, tmp_path):
    files = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    rc, out, err = cli.run(["--resume", f"--out={run_copy}"], tmp_path)
    assert rc == 0 and err == "", err
    assert "finished run" in out and "nothing to do" in out
    assert {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()} == files


def test_resume_continues_a_finished_run_when_max_steps_grows(cli, run_copy, tmp_path):
    rc, _, err = cli.run(["--resume", f"--out={run_copy}", "--max_steps=8"], tmp_path)
    assert rc == 0, err
    recs = records(run_copy)
    assert [r["step"] for r in recs if "loss" in r] == list(range(1, 9))
    assert [r["step"] for r in recs if r.get("event") == "final"] == [8]  # the old final record is gone


# ------------------------------------------------------------------ damaged checkpoints

def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _replace_state(path, change):
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


CHECKPOINT_FAULTS = [
    ("truncated", _truncate, "truncated or corrupted"),
    ("empty", lambda p: p.write_bytes(b""), "is empty"),
    ("text", lambda p: p.write_text("hello\n"), "checkpoint"),
    ("pickle-that-runs-code", lambda p: p.write_bytes(pickle.dumps({"model": _RunsCode()})),
     "could run code"),
    ("torch-pickle-that-runs-code", lambda p: torch.save({"model": _RunsCode()}, p), "could run code"),
    ("a-plain-state-dict", lambda p: torch.save({"weight": torch.ones(2)}, p), "not a kerjepa checkpoint"),
    ("missing-tensors", lambda p: _replace_state(p, lambda s: s["model"].pop(next(iter(s["model"])))),
     "does not fit"),
    ("another-model-in-its-config", lambda p: _replace_state(p, lambda s: s["config"].update(micro_width=64)),
     "does not fit"),
    ("config-of-another-version", lambda p: _replace_state(p, lambda s: s["config"].update(bogus=1)),
     "cannot use"),
    ("a-folder", lambda p: (p.unlink(), p.mkdir()), "is not a file"),
]


@pytest.mark.parametrize("damage, message", [c[1:] for c in CHECKPOINT_FAULTS], ids=[c[0] for c in CHECKPOINT_FAULTS])
def test_damaged_checkpoint_gives_one_error_line(cli, run_copy, tmp_path, damage, message):
    path = run_copy / C.CHECKPOINT
    damage(path)
    rc, _, err = cli.run(["--resume", f"--out={run_copy}"], tmp_path)
    assert_one_error(rc, err, message)
    assert str(path) in err and "weights_only" not in err and "pwned" not in err


@pytest.mark.parametrize("args, message", [
    (["--preset=smoke"], "is a 'digits-cpu' run, not 'smoke'"),
    (["--micro_width=64"], "['micro_width'] differ"),
    (["--lr=1e-4"], "add --recover"),
    (["--overwrite"], "contradict"),
], ids=["another-preset", "another-model", "new-lr-without-recover", "resume-and-overwrite"])
def test_resume_with_another_config_gives_one_error_line(cli, run_copy, tmp_path, args, message):
    rc, _, err = cli.run(["--resume", f"--out={run_copy}", *args], tmp_path)
    assert_one_error(rc, err, message)


# ------------------------------------------------------------------ interruption and preemption

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL],
                         ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_signal_then_resume_is_bit_identical(cli, finished_run, tmp_path, signum):
    """Stopped inside the optimizer step of step 3; SIGTERM and SIGINT checkpoint that step, SIGKILL cannot."""
    run = tmp_path / "run"
    rc, _, err = cli.run(TINY + [f"--out={run}"], tmp_path, signal_at_step=[3, int(signum)])
    if signum == signal.SIGKILL:
        assert rc == -signal.SIGKILL and ckpt(run)["step"] == 2  # the last periodic checkpoint
    else:
        assert rc == 128 + signum, err
        assert "Traceback" not in err and f"interrupted by {signal.Signals(signum).name} at step 3" in err
        assert ckpt(run)["step"] == 3  # the step reached, not the last periodic checkpoint (2)
    rc, _, err = cli.run(["--resume", f"--out={run}"], tmp_path)
    assert rc == 0, err
    a, b = ckpt(finished_run), ckpt(run)
    assert a["step"] == b["step"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["optimizer"]["state"]:
        for name, value in a["optimizer"]["state"][key].items():
            assert torch.equal(value, b["optimizer"]["state"][key][name]), (key, name)
    strip = lambda recs: [{k: v for k, v in r.items() if k not in ("imgs_per_s", "wall_time_s")} for r in recs]
    assert strip(records(run)) == strip(records(finished_run))  # same metrics, none duplicated or missing


def test_sigterm_before_training_starts_stops_at_once(cli, run_copy, tmp_path):
    """While the data is checked nothing can be lost: the run stops at once, the checkpoint stays as it was."""
    before = (run_copy / C.CHECKPOINT).read_bytes()
    rc, _, err = cli.run(["--resume", f"--out={run_copy}", "--max_steps=8"], tmp_path,
                         signal_in=["check_model", int(signal.SIGTERM)])
    assert rc == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert "stopped at once" in err and "is as it was" in err and len(err.strip().splitlines()) == 1
    assert (run_copy / C.CHECKPOINT).read_bytes() == before


def test_sigterm_to_the_process_group_with_dataloader_workers(cli, finished_run, tmp_path):
    """A scheduler signals every process of the job: the workers too. The run still stops after a checkpoint."""
    run = tmp_path / "run"
    rc, _, err = cli.run(TINY + ["--num_workers=2", f"--out={run}"], tmp_path,
                         signal_at_step=[3, int(signal.SIGTERM)], signal_group=True)
    assert rc == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert ckpt(run)["step"] == 3
    rc, _, err = cli.run(["--resume", f"--out={run}", "--num_workers=0"], tmp_path)
    assert rc == 0, err
    a, b = ckpt(finished_run), ckpt(run)
    assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"])


def test_torn_metrics_line_is_repaired_on_resume(cli, finished_run, tmp_path):
    run = tmp_path / "run"
    rc, _, err = cli.run(TINY + [f"--out={run}"], tmp_path, signal_at_step=[5, int(signal.SIGTERM)])
    assert rc == 128 + signal.SIGTERM, err
    with open(run / C.METRICS, "a") as fh:
        fh.write('{"step": 6, "epoch": 0.27, "loss": 1.2')  # a kill in the middle of a write
    rc, _, err = cli.run(["--resume", f"--out={run}"], tmp_path)
    assert rc == 0, err
    strip = lambda recs: [{k: v for k, v in r.items() if k not in ("imgs_per_s", "wall_time_s")} for r in recs]
    assert strip(records(run)) == strip(records(finished_run))


# ------------------------------------------------------------------ divergence and recovery

def test_nonfinite_loss_keeps_the_last_good_checkpoint_then_recovers(cli, tmp_path):
    run = tmp_path / "run"
    rc, _, err = cli.run(TINY + ["--ckpt_every=1", f"--out={run}"], tmp_path, nan_after=4)  # NaN at step 2 (0-based)
    assert_one_error(rc, err, "non-finite loss at step 2")
    assert rc == 1 and "the last good checkpoint (step 2)" in err and "--recover" in err
    state = ckpt(run)
    assert state["step"] == 2
    assert C.first_nonfinite([*state["model"].items()]) is None
    rc, _, err = cli.run(["--resume", f"--out={run}", "--recover", "--lr=1e-3", "--grad_clip=1.0"], tmp_path)
    assert rc == 0, err
    assert "lr: 0.001" in (run / C.CONFIG).read_text() and "grad_clip: 1.0" in (run / C.CONFIG).read_text()
    recover = [r for r in records(run) if r.get("event") == "recover"]
    assert recover == [{"step": 2, "event": "recover", "changed": {"lr": [0.002, 0.001], "grad_clip": [0.0, 1.0]}}]
    assert ckpt(run)["changes"] == [{"step": 2, "lr": [0.002, 0.001], "grad_clip": [0.0, 1.0]}]
    assert [r["step"] for r in records(run) if "loss" in r] == list(range(1, 7))
    groups = ckpt(run)["optimizer"]["param_groups"]
    assert groups[0]["base_lr"] == groups[1]["base_lr"] == 1e-3  # the optimizer runs at the new lr


def test_nonfinite_weights_are_never_saved(cli, tmp_path):
    """The update of step 3 turns a weight NaN while the loss was finite: the checkpoint of step 2 stays."""
    run = tmp_path / "run"
    rc, _, err = cli.run(TINY + ["--ckpt_every=1", f"--out={run}"], tmp_path, poison_at_step=3)
    assert_one_error(rc, err, "non-finite weights after step 3")
    assert rc == 1 and "the last good checkpoint (step 2)" in err
    state = ckpt(run)
    moments = [(f"{i}.{k}", v) for i, st in state["optimizer"]["state"].items() for k, v in st.items()]
    assert state["step"] == 2 and C.first_nonfinite([*state["model"].items(), *moments]) is None


def test_huge_learning_rate_stops_with_a_finite_checkpoint(cli, tmp_path):
    """lr = 1e30 (the weights jump to ~1e30, then the loss is NaN): the run stops, every saved tensor is finite."""
    run = tmp_path / "run"
    rc, _, err = cli.run(TINY + ["--ckpt_every=1", "--lr=1e30", "--warmup_start_factor=1", f"--out={run}"], tmp_path)
    assert_one_error(rc, err, "non-finite")
    assert rc == 1
    state = ckpt(run)
    assert f"the last good checkpoint (step {state['step']})" in err
    moments = [(f"{i}.{k}", v) for i, st in state["optimizer"]["state"].items() for k, v in st.items()]
    assert C.first_nonfinite([*state["model"].items(), *moments]) is None


# ------------------------------------------------------------------ data and disk

@pytest.mark.parametrize("split", ["train", "val"])
def test_undecodable_image_is_found_before_training(cli, tmp_path, split):
    root = make_imagenette(tmp_path / "data")
    bad = root / "imagenette2-160" / split / kdata.IMAGENETTE_WNIDS[1] / "broken.JPEG"
    good = next((root / "imagenette2-160" / split / kdata.IMAGENETTE_WNIDS[1]).iterdir()).read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # a truncated JPEG: its header reads fine
    rc, _, err = cli.run(["--preset=smoke", f"--data_root={root}", f"--out={tmp_path / 'run'}"], tmp_path)
    assert_one_error(rc, err, f"cannot decode 1 of 13 images: {bad}")
    assert rc == 2 and not (tmp_path / "run" / C.METRICS).exists()


def test_a_write_that_fails_mid_run_names_the_file(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / (C.CHECKPOINT + ".tmp")).symlink_to("/dev/full")  # every write to it fails: no space left
    rc, _, err = cli.run(TINY + [f"--out={run}"], tmp_path)
    assert_one_error(rc, err, f"cannot write the checkpoint {run / C.CHECKPOINT}")
    assert "No space left on device" in err


# ------------------------------------------------------------------ the command itself

def test_list_presets_into_a_closed_pipe(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "kerjepa.train", "--list-presets"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `| head` that has already quit: every write gets EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 128 + signal.SIGPIPE
    assert err == "", err


def test_yaml_numbers_on_the_command_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "kerjepa.train", "--reg.gamma=1e-3", "--lam=2e0", "--help-config"],
                         cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    import yaml
    cfg = yaml.safe_load(res.stdout)
    assert cfg["reg"]["gamma"] == 1e-3 and cfg["lam"] == 2.0


def test_first_nonfinite_names_the_first_bad_tensor():
    ok, nan, inf = torch.ones(3), torch.tensor([1.0, float("nan")]), torch.tensor([float("inf")], dtype=torch.float64)
    assert C.first_nonfinite([("a", ok), ("step", torch.tensor(3)), ("empty", torch.empty(0))]) is None
    assert C.first_nonfinite([("a", ok), ("b", nan), ("c", inf)]) == "b"
    assert C.first_nonfinite([("a", ok), ("c", inf), ("n", 5.0)]) == "c"
