"""Config: presets, YAML and --key=value overrides, type checks, validation messages."""
from __future__ import annotations

import pytest
import yaml

import kerjepa
from kerjepa.training import config as C


def test_preset_families():
    names = C.preset_names()
    assert len([n for n in names if n.startswith("table1/")]) == 11
    assert len([n for n in names if n.startswith("fig2/")]) == 36
    assert len([n for n in names if n.startswith("fig3/")]) == 36
    assert {"digits-cpu", "smoke", "lejepa/minimal", "table1/lejepa", "table1/ksd-unsliced-imq-gaussian",
            "fig2/mmd-d1024-sinf-e800"} <= set(names)


@pytest.mark.parametrize("name", C.preset_names())
def test_every_preset_validates_and_builds_its_regularizer(name):
    cfg = C.get_preset(name)
    assert cfg.preset == name
    assert C.Config.from_dict(cfg.to_dict()) == cfg  # round trip through builtins
    reg = kerjepa.regularizer(**cfg.reg)
    assert "step" in reg.state_dict()


def test_table1_matches_the_paper_setup():
    for name in C.preset_names():
        if not name.startswith("table1/"):
            continue
        cfg = C.get_preset(name)
        assert (cfg.model, cfg.img_size, cfg.epochs, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.views,
                cfg.proj_dim) == ("vit_small_patch8_224", 128, 800, 5e-4, 0.05, 256, 4, 128)
        if isinstance(cfg.reg.get("slices"), int):
            assert cfg.reg["slices"] == 1024 and cfg.reg.get("num_knots", cfg.reg.get("n_points")) == 21
    assert C.get_preset("table1/ksd-unsliced-imq-gaussian").reg == {"kind": "ksd", "kernel": "imq",
                                                                      "prior": "gaussian"}


def test_overrides_are_parsed_and_type_checked():
    cfg = C.from_args("digits-cpu", None, ["--lr=1e-3", "--max_steps=5", "--reg.kind=mmd", "--compile=true",
                                           "--local_crop_scale=[0.1, 0.4]", "--lambda=0.5"])
    assert (cfg.lr, cfg.max_steps, cfg.reg["kind"], cfg.compile, cfg.local_crop_scale, cfg.lam) == (
        1e-3, 5, "mmd", True, (0.1, 0.4), 0.5)
    assert cfg.reg["scale"] == "lejepa"  # the rest of the preset's spec is kept
    cfg = C.from_args("digits-cpu", None, ["--reg={kind: ksd, slices: analytic}", "--max_steps=none"])
    assert cfg.reg == {"kind": "ksd", "slices": "analytic"} and cfg.max_steps is None


@pytest.mark.parametrize("override, message", [
    ("--lr=fast", "lr must be of type float"),
    ("--epochs=1.5", "epochs must be of type int"),
    ("--compile=maybe", "compile must be of type bool"),
    ("--max_step=3", "did you mean 'max_steps'"),
    ("--lam=-1", "must be a finite number >= 0"),
    ("--reg.foo=1", "unknown regularizer key 'foo'"),
    ("--dataset=mnist", "dataset must be one of"),
    ("--views=1", "at least 2 views"),
    ("--min_lr_ratio=2", "relative to the peak"),
    ("--pretrained=true", "unknown config key"),
    ("--batch_size=1", "batch_size must be >= 2"),
    ("--micro_width=30", "divisible by micro_heads"),
    ("--lr=.inf", "lr must be a finite number"),
    ("--warmup_epochs=.nan", "warmup_epochs must be a finite number"),
    ("--lam=1e39", "within float32 range"),
    ("--local_crop_scale=[0.1, .inf]", "local_crop_scale must be a finite number"),
])
def test_bad_overrides_have_clear_messages(override, message):
    with pytest.raises(C.ConfigError, match=message):
        C.from_args("digits-cpu", None, [override])


def test_unknown_preset_lists_the_families():
    with pytest.raises(C.ConfigError, match=r"unknown preset 'table1/ksd'.*table1/\.\.\."):
        C.get_preset("table1/ksd")


def test_yaml_file_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 3.0e-4\nepochs: 7\nreg:\n  kind: mmd\n  kernel: imq\nlambda: 2\n")
    cfg = C.from_args("smoke", path, ["--epochs=9"])
    assert (cfg.lr, cfg.epochs, cfg.reg, cfg.lam) == (3e-4, 9, {"kind": "mmd", "kernel": "imq"}, 2.0)
    path.write_text("- not a mapping\n")
    with pytest.raises(C.ConfigError, match="must hold a mapping"):
        C.from_args("smoke", path)
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.from_args("smoke", tmp_path / "missing.yaml")


def test_dump_is_plain_yaml():
    cfg = C.get_preset("table1/lejepa")
    assert C.Config.from_dict(yaml.safe_load(C.dumps(cfg))) == cfg


def test_yaml_style_numbers_are_numbers(tmp_path):
    """YAML 1.1 reads 1e-3 (no dot) as a string; on the command line and in files it is a number, nested too."""
    cfg = C.from_args("digits-cpu", None, ["--reg.gamma=1e-3", "--lr=2E-4", "--reg={kind: ksd, beta: -5e-1}",
                                           "--local_crop_scale=[5e-2, 3e-1]"])
    assert cfg.reg == {"kind": "ksd", "beta": -0.5, "gamma": 1e-3} and cfg.lr == 2e-4 and cfg.local_crop_scale == (0.05, 0.3)
    assert C.from_args("digits-cpu", None, ["--reg.gamma=1e-3"]).reg["gamma"] == 1e-3
    path = tmp_path / "run.yaml"
    path.write_text("reg:\n  kind: mmd\n  gamma: 1e-2\nlam: 5e-1\n")
    cfg = C.from_args("digits-cpu", path)
    assert cfg.reg == {"kind": "mmd", "gamma": 0.01} and cfg.lam == 0.5
    assert C.from_args("digits-cpu", None, ["--data_root=1e3x"]).data_root == "1e3x"  # not a number: kept
    with pytest.raises(C.ConfigError, match="epochs must be of type int"):
        C.from_args("digits-cpu", None, ["--epochs=1e3"])
