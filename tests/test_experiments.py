"""Experiment runner: rows appended once, re-runs skip them, torn lines repaired, dry runs, statistics."""
import json
import math

import numpy as np
import pytest
import torch

from kerjepa.training import data as kdata
from kerjepa.training import experiments as E
from kerjepa.training.config import Config, get_preset


def _tiny_cells(results_dir=None, untuned=False):
    base = get_preset("digits-cpu").replace(
        epochs=1, max_steps=2, batch_size=64, eval_batch_size=128, micro_width=16, micro_depth=1, micro_heads=2,
        proj_hidden=32, proj_dim=8, eval_every=1, eval_init=False, ckpt_every=0, probe_steps=5, knn_k=3,
        progress=False, tensorboard=False, warmup_epochs=0.0)
    return [E.Cell("mmd", base.replace(lam=1.0).to_dict(), {"row": "mmd"}),
            E.Cell("none", base.replace(lam=0.0).to_dict(), {"row": "none"})]


def _fake_measure(calls):
    def measure(cell, seed):
        calls.append((cell.name, seed))
        return {"linear_probe_acc": 0.5 + 0.1 * seed + (0.05 if cell.name == "mmd" else 0.0)}
    return measure


def _experiment(measure, cells=_tiny_cells, seeds=(0, 1)):
    return E.Experiment("tiny", "a tiny grid", cells, seeds, measure, lambda cell: 1.0)


def test_runner_trains_appends_and_skips(tmp_path):
    exp = _experiment(E._train_measure, seeds=(0,))
    assert E.run_experiment(exp, results_dir=tmp_path, progress=False) == 2
    rows = E.read_rows(tmp_path / "tiny.jsonl")
    assert [r["cell"] for r in rows] == ["mmd", "none"]
    for r in rows:
        assert r["config"]["seed"] == r["seed"] == 0
        assert r["command"] == f"python -m kerjepa.experiments tiny --cell {r['cell']} --seeds 0"
        assert set(r["machine"]) >= {"cpu", "torch_threads", "torch"}
        assert r["wall_time_s"] > 0 and r["git_commit"]
        m = r["metrics"]
        assert 0 <= m["knn_acc"] <= 1 and 0 <= m["linear_probe_acc"] <= 1 and 0 <= m["online_probe_acc"] <= 1
        assert m["steps"] == 2 and m["online_probe_curve"][-1][1] == m["online_probe_acc"]
    # a second start finds every row and runs nothing
    calls = []
    assert E.run_experiment(_experiment(_fake_measure(calls), seeds=(0,)), results_dir=tmp_path, progress=False) == 0
    assert calls == []


def test_rerun_skips_done_rows_and_runs_new_seeds(tmp_path):
    calls = []
    exp = _experiment(_fake_measure(calls))
    assert E.run_experiment(exp, seeds=(0,), results_dir=tmp_path, progress=False) == 2
    assert E.run_experiment(exp, results_dir=tmp_path, progress=False) == 2       # only seed 1 is new
    assert calls == [("mmd", 0), ("none", 0), ("mmd", 1), ("none", 1)]            # seed-major order
    keys = [r["key"] for r in E.read_rows(tmp_path / "tiny.jsonl")]
    assert len(keys) == len(set(keys)) == 4


def test_torn_last_line_is_repaired_and_rerun(tmp_path):
    calls = []
    exp = _experiment(_fake_measure(calls))
    E.run_experiment(exp, results_dir=tmp_path, progress=False)
    path = tmp_path / "tiny.jsonl"
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:25])   # an append cut short
    assert len(E.read_rows(path)) == 3
    calls.clear()
    assert E.run_experiment(exp, results_dir=tmp_path, progress=False) == 1
    assert calls == [("none", 1)]
    rows, before = E.read_rows(path), [json.loads(line) for line in lines]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("wall_time_s", "cpu_time_s", "finished_utc")}
    assert [strip(r) for r in rows] == [strip(r) for r in before]            # same rows, same order
    assert path.read_text().endswith("}\n")


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "tiny.jsonl"
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(E.ResultsError, match="line 2"):
        E.repair(path)


def test_unknown_cell_names_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown cell.*'mmd'"):
        E.plan(_experiment(_fake_measure([])), cells=["mdm"], results_dir=tmp_path)


def test_dry_run_prints_the_grid_and_an_estimate(tmp_path, capsys):
    exp = _experiment(_fake_measure([]))
    E.run_experiment(exp, seeds=(0,), results_dir=tmp_path, progress=False)
    text = E._dry_run(exp, None, None, tmp_path)
    assert text.count("done") >= 2 and text.count("pending") == 2
    assert "4 runs, 2 done; estimated CPU time: 0.00 h in all" in text


def test_cli_lists_and_dry_runs(capsys):
    assert E.main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("e1", "e2", "e2-small", "e3-tune", "e3", "e3-small-tune", "e3-small", "e3-mini-tune", "e3-mini"):
        assert f"\n{name} " in "\n" + out
    with pytest.raises(SystemExit):
        E.main(["e9"])


def test_holdout_split_is_disjoint_from_validation():
    cfg = get_preset("digits-cpu")
    train, val, _, _ = kdata.build_datasets(cfg)
    h_train, h_val, _, _ = kdata.build_datasets(cfg.replace(dataset="digits-holdout"))
    assert (len(h_train), len(h_val)) == (1149, 288)
    key = lambda ds: {tuple(ds[i][0].flatten().tolist()) + (ds[i][1],) for i in range(len(ds))}
    train_set, val_set = key(train), key(val)
    assert key(h_train) | key(h_val) <= train_set
    assert not (key(h_train) | key(h_val)) & val_set
    assert not key(h_train) & key(h_val)


def test_matched_lambda_matches_gradients():
    spec = {"kind": "mmd", "scale": "lejepa"}
    lam = E.matched_lambda(spec, dim=8, batch_size=64, scales=(1.0,))
    ref = E.lambda_from_lejepa(E.LEJEPA_LAMBDA, 4, 8)
    g = torch.randn(4, 64, 8, generator=torch.Generator().manual_seed(0))
    norms = []
    for module in (E.regularizer("epps_pulley", slices=1024, n_points=21), E.regularizer(**spec)):
        z = g.clone().requires_grad_(True)
        norms.append(float(torch.autograd.grad(module(z), z)[0].norm()))
    assert lam * norms[1] == pytest.approx(ref * norms[0], rel=5e-3)   # 3 significant digits


def test_statistics_against_hand_values():
    m, se, n = E.mean_se([1.0, 2.0, 4.0])
    assert (m, n) == (7 / 3, 3) and se == pytest.approx(math.sqrt((16 / 9 + 1 / 9 + 25 / 9) / 2 / 3))
    d = E.paired_difference({0: 0.9, 1: 0.8, 2: 0.85}, {0: 0.8, 1: 0.8, 2: 0.8})
    assert d["diff"] == pytest.approx(0.05) and d["n"] == 3
    assert d["lo"] == pytest.approx(0.05 - 4.302653 * d["se"], rel=1e-5)
    tune = [{"info": {"row": "a", "factor": f}, "config": {"lam": lam}, "metrics": {"linear_probe_acc": acc}}
            for f, lam, acc in ((0.5, 1.0, 0.7), (1, 2.0, 0.9), (2, 4.0, 0.9))]
    assert E.select_lambda(tune)["a"]["lam"] == 2.0                  # ties go to the smaller lambda
    assert E.loglog_slope([1, 4, 16], [1, 0.5, 0.25]) == pytest.approx(-0.5)


def _two_row_grid(tmp_path, monkeypatch, calls):
    """A tuned grid with rows a, b (two lambdas each; a prefers the larger, b the smaller) and its tuning grid."""
    def tune_cells(results_dir=None, untuned=False, names_only=False):
        return [E.Cell(f"{row}@x{f:g}", {"row": row, "lam": f}, {"row": row, "factor": f})
                for row in ("a", "b") for f in (1.0, 2.0)]

    def cells(results_dir=None, untuned=False, names_only=False):
        if names_only:
            return [E.Cell(row, {}, {"row": row}) for row in ("a", "b")]
        chosen = E.select_lambda(E.read_rows(tmp_path / "t-tune.jsonl"))
        return [E.Cell(row, {"row": row, "lam": c["lam"]}, {"row": row}) for row, c in chosen.items()]

    def measure(cell, seed):
        calls.append((cell.name, seed))
        return {"linear_probe_acc": cell.config["lam"] * (1 if cell.config["row"] == "a" else -1)}

    monkeypatch.setitem(E.EXPERIMENTS, "t-tune", E.Experiment("t-tune", "", tune_cells, (0,), measure, lambda c: 1.0))
    main = E.Experiment("t", "", cells, (0, 1), measure, lambda c: 1.0, requires="t-tune")
    monkeypatch.setitem(E.EXPERIMENTS, "t", main)
    return main


def test_tuned_grid_runs_row_by_row(tmp_path, monkeypatch):
    calls = []
    main = _two_row_grid(tmp_path, monkeypatch, calls)
    assert E.run_tuned(main, results_dir=tmp_path, progress=False) == 8
    assert calls == [("a@x1", 0), ("a@x2", 0), ("a", 0), ("b@x1", 0), ("b@x2", 0), ("b", 0), ("a", 1), ("b", 1)]
    assert {r["cell"]: r["config"]["lam"] for r in E.read_rows(tmp_path / "t.jsonl")} == {"a": 2.0, "b": 1.0}


def test_tuned_grid_splits_by_rows(tmp_path, monkeypatch):
    """`--cell` on a tuned grid restricts tuning and training to those rows: processes share a grid."""
    calls = []
    main = _two_row_grid(tmp_path, monkeypatch, calls)
    E.run_experiment(E.EXPERIMENTS["t-tune"], cells=["a@x1", "a@x2"], results_dir=tmp_path, progress=False)
    calls.clear()  # a is tuned (by another process, say) but not trained: a process given b must leave it alone
    assert E.main(["t", "--cell", "b", "--results-dir", str(tmp_path), "--no-progress"]) == 0
    assert calls == [("b@x1", 0), ("b@x2", 0), ("b", 0), ("b", 1)]
    calls.clear()
    assert E.run_tuned(main, results_dir=tmp_path, progress=False, rows=["a", "b"]) == 2   # a is tuned, b is done
    assert calls == [("a", 0), ("a", 1)]
    with pytest.raises(ValueError, match=r"rows: \['c'\] are not rows of 't'"):
        E.run_tuned(main, results_dir=tmp_path, progress=False, rows=["c"])


def test_sweep_widens_while_the_best_lambda_is_at_an_edge():
    def done(scores, centre=3.0):
        return [{"info": {"row": "a", "factor": f, "centre": centre}, "metrics": {"linear_probe_acc": acc}}
                for f, acc in scores.items()]

    base = (0.25, 0.5, 1.0, 2.0, 4.0)
    assert E._extended_factors(base, 3.0, done({0.25: 0.1, 0.5: 0.2}), 2) == list(base)        # unfinished
    assert E._extended_factors(base, 3.0, done({f: -abs(f - 1) for f in base}), 2) == list(base)  # inside
    rising = {f: f for f in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)}
    assert E._extended_factors(base, 3.0, done({f: rising[f] for f in base}), 2) == [*base, 8.0]
    assert E._extended_factors(base, 3.0, done(rising), 2) == [*base, 8.0, 16.0]                # at most 2 steps
    falling = {f: -f for f in (0.125, *base)}
    assert E._extended_factors(base, 3.0, done(falling), 2) == [0.0625, 0.125, *base]           # unfinished 0.0625
    assert E._extended_factors(base, 3.0, done(falling, centre=5.0), 2) == list(base)          # another centre
    ties = {f: 0.5 for f in base}
    assert E._extended_factors(base, 3.0, done(ties), 2) == [0.125, *base]                     # ties: the smaller


def test_tuned_grid_follows_a_widening_sweep(tmp_path, monkeypatch):
    calls = []

    def tune_cells(results_dir=None, untuned=False, names_only=False):
        done = E.read_rows(tmp_path / "t-tune.jsonl")
        return [E.Cell(f"a@x{f:g}", {"row": "a", "lam": f}, {"row": "a", "factor": f, "centre": 1.0})
                for f in E._extended_factors((0.5, 1.0, 2.0), 1.0, done, extend=1)]

    def cells(results_dir=None, untuned=False, names_only=False):
        if names_only:
            return [E.Cell("a", {}, {"row": "a"})]
        chosen = E.select_lambda(E.read_rows(tmp_path / "t-tune.jsonl"))
        return [E.Cell(row, {"row": row, "lam": c["lam"]}, {"row": row}) for row, c in chosen.items()]

    def measure(cell, seed):
        calls.append(cell.name)
        return {"linear_probe_acc": cell.config["lam"]}   # larger is better: the sweep widens upward once

    monkeypatch.setitem(E.EXPERIMENTS, "t-tune", E.Experiment("t-tune", "", tune_cells, (0,), measure, lambda c: 1.0))
    main = E.Experiment("t", "", cells, (0,), measure, lambda c: 1.0, requires="t-tune")
    bars = []

    class Bar:  # records what the runner tells its progress bar
        def __init__(self, total, **kwargs):
            self.total, self.n, self.closed = total, 0, False
            bars.append(self)

        def update(self, n):
            self.n += n

        def set_postfix_str(self, text):
            pass

        def refresh(self):
            pass

        def close(self):
            self.closed = True

    monkeypatch.setattr("tqdm.auto.tqdm", Bar)
    assert E.run_tuned(main, results_dir=tmp_path, progress=True) == 5
    assert calls == ["a@x0.5", "a@x1", "a@x2", "a@x4", "a"]
    assert len(bars) == 1 and bars[0].n == bars[0].total == 5 and bars[0].closed   # one bar, grown by the widening
    assert E.read_rows(tmp_path / "t.jsonl")[0]["config"]["lam"] == 4.0


def test_a_grid_still_landing_does_not_replace_a_complete_one():
    def rows(cells, seeds):
        return [{"cell": c, "seed": s} for c in cells for s in seeds]

    mini = [c.name for c in E.EXPERIMENTS["e3-mini"].cells(names_only=True)]
    full = [c.name for c in E.EXPERIMENTS["e3"].cells(names_only=True)]
    assert set(mini) < set(full) and "none" in full
    results = {"e3-mini": rows(mini, (0, 1, 2)), "e3": rows(full, (0,))}     # e3: seed 0 only so far
    assert E.is_complete("e3-mini", results["e3-mini"]) and not E.is_complete("e3", results["e3"])
    assert E.e3_rows_of(results) == results["e3-mini"]
    results["e3"] = rows(full, (0, 1, 2, 3, 4))
    assert E.e3_rows_of(results) == results["e3"]
    assert not E.is_complete("e3-mini", rows(mini[:-1], (0, 1, 2))) and not E.is_complete("e3-mini", [])


def _glued(path):
    """Glue values (text/markdown) of an executed notebook, by key."""
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    out = {}
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            name = o.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                data = o["data"]
                out[name] = next(v for k, v in data.items() if k.endswith("text/markdown"))
    return out


def test_chapter_shows_the_recorded_numbers():
    from pathlib import Path
    values = E.chapter_values()
    glued = _glued(Path(__file__).resolve().parents[1] / "book" / "08_reproduction.ipynb")
    assert glued == values
    # independently of the chapter's helpers: E1 slopes and E3 means straight from the JSON lines
    results = E.load_results()
    for r in results.get("e1", []):
        errs = r["metrics"]["relative_error"]
        ks = sorted(int(k) for k in errs)
        means = [sum(errs[str(k)]) / len(errs[str(k)]) for k in ks]
        c = r["config"]
        slope = float(np.polyfit(np.log(ks), np.log(means), 1)[0])
        assert values[f"e1_slope_{c['source']}_{c['kind']}_d{c['dim']}"] == f"{slope:.2f}"
    e3 = E.e3_rows_of(results)
    for cell in {r["cell"] for r in e3}:
        accs = [r["metrics"]["linear_probe_acc"] for r in e3 if r["cell"] == cell]
        assert values[f"e3_{cell}_linear"].startswith(f"{100 * float(np.mean(accs)):.1f}")
        assert values[f"e3_{cell}_n"] == str(len(accs))
    # E2: every cell's means and the paired slicing gaps, from the JSON lines of the files the chapter names
    names = [n.strip("`") for n in values["e2_grid"].split(" + ")]
    e2 = [json.loads(line) for n in names for line in (E.RESULTS_DIR / f"{n}.jsonl").read_text().splitlines()]
    by_cell = {}
    for r in e2:
        by_cell.setdefault(r["cell"], []).append(r["metrics"])
    for cell, ms in by_cell.items():
        for metric, short in (("linear_probe_acc", "linear"), ("online_probe_acc", "online")):
            assert values[f"e2_{cell}_{short}"].startswith(f"{100 * float(np.mean([m[metric] for m in ms])):.1f} ± ")
    for kind in ("mmd", "ksd"):
        for sched in {r["info"]["schedule"] for r in e2}:
            for dim in (16, 128, 1024):
                acc = {k: {r["seed"]: r["metrics"]["linear_probe_acc"] for r in e2
                           if r["cell"] == f"{kind}-d{dim}-s{k}-{sched}"} for k in ("analytic", 16)}
                gap = np.mean([acc["analytic"][s] - acc[16][s] for s in acc[16]])
                assert values[f"e2slicing_linear_{kind}_{sched}_gap_d{dim}"] == f"{100 * gap:+.1f}"


def _fake_run(name, cell, seed, acc, info=None, lam=1.0):
    m = {"linear_probe_acc": acc, "knn_acc": acc, "online_probe_acc": acc, "online_probe_curve": [[1, acc / 2], [2, acc]],
         "steps": 2}
    return {"experiment": name, "cell": cell.name, "seed": seed, "info": info or cell.info, "config": {"lam": lam},
            "metrics": m, "wall_time_s": 60.0, "machine": {"cpu": "test"}, "command": E._command(name, cell.name, seed)}


def test_chapter_values_on_complete_full_grids():
    """Fabricated complete e2-short, e2-long and e3 grids: the chapter switches to them and the verdicts follow
    the data."""
    noise = {0: 0.004, 1: -0.006, 2: 0.002, 3: -0.001, 4: 0.003}
    e2 = {"e2-short": [], "e2-long": []}
    for name in e2:
        for cell in E.EXPERIMENTS[name].cells(names_only=True):
            i = cell.info
            acc = 0.6
            if i["kind"] == "mmd" and i["slices"] == 16:
                acc = 0.55 if i["dim"] == 16 else 0.35          # the gap to analytic grows with D: claim 1 holds
            if i["kind"] == "ksd" and i["slices"] == 16 and i["schedule"] == "long":
                acc = 0.5 if i["dim"] == 16 else 0.7            # the gap shrinks with D: claim 1 does not hold
            e2[name] += [_fake_run(name, cell, s, acc + noise[s] * (i["slices"] == 16)) for s in (0, 1, 2)]
    best, gains = "ksd-unsliced-imq-gaussian", {"none": 0.3, "mmd-sliced-gaussian-laplace": 0.77}
    e3, tune = [], []
    for cell in E.EXPERIMENTS["e3"].cells(names_only=True):
        acc = gains.get(cell.name, 0.9 if cell.name == best else 0.8)
        e3 += [_fake_run("e3", cell, s, acc + noise[s] * (cell.name != best)) for s in range(5)]
    for cell in E.EXPERIMENTS["e3-tune"].cells(names_only=True):
        tune.append(_fake_run("e3-tune", cell, 0, 0.8 - abs(cell.info["factor"] - 1) / 10,
                              {**cell.info, "centre": 1.0}, lam=cell.info["factor"]))
    results = {**E.load_results(), "e2-short": e2["e2-short"], "e2-long": e2["e2-long"][:-1], "e2-long-rest": [],
               "e3": e3, "e3-tune": tune}
    v = E.chapter_values(results)
    claim1 = "MMD, short schedule: held; KSD, short schedule: not resolvable at this scale (the 95 % interval contains 0)"
    assert v["e2_grid"] == "`e2-short`"                 # e2-long lacks a run: the short grid alone
    assert v["claim1_verdict"] == claim1 and "long one" not in v["claim1_ours"]
    assert "`e2-long` (35 of its 36 runs in)" in v["runs_partial"]
    results["e2-long"] = e2["e2-long"]
    v = E.chapter_values(results)
    assert v["e2_grid"] == "`e2-short` + `e2-long`" and v["e3_grid"] == "`e3`" and v["e3_missing"] == "none"
    assert v["e2_grid_design"].startswith(E.EXPERIMENTS["e2-short"].description + "; ")
    assert "`e3`" not in v["runs_partial"] and "`e2-long`" not in v["runs_partial"]
    assert v["claim1_verdict"] == claim1           # decided on the short schedule; the long one is reported beside it
    assert ("E2 (KSD, linear probe): at D = 1024 the gap analytic minus 16 slices is +0.0 points on the short "
            "schedule and -10.0 on the long one (short minus long: +10.0 [") in v["claim1_ours"]
    assert v["online_claim1_verdict"] == claim1    # the fabricated runs have one accuracy for every probe
    # the slicing table: analytic minus 16 slices by D, its change and its average over D, paired by seed
    assert [v[f"e2slicing_linear_mmd_short_gap_d{d}"] for d in (16, 128, 1024)] == ["+5.0", "+25.0", "+25.0"]
    assert v["e2slicing_linear_mmd_short_change"].startswith("+20.0 [+20.0, +20.0]")
    assert v["e2slicing_linear_mmd_short_advantage"].startswith("+18.3 [")
    assert v["e2slicing_online_ksd_long_gap_d1024"] == "-10.0" and v["e2slicing_linear_ksd_long_change"].startswith("-20.0")
    one_seed = [r for r in e2["e2-short"] if r["seed"] == 0]
    assert E._slicing_change(one_seed, "mmd", "short")[1] == "not resolvable at this scale (one seed)"
    assert v["e2_mmd-d1024-s16-long_online"].startswith("35.") and v["e2_long_steps"] == "2"
    assert v["e2_short_online_max"] == "60.0"
    assert sum(r["cell"].endswith("-long") for r in E.e2_rows_of(results)) == 36
    rest = [_fake_run("e2-long-rest", c, s, 0.6) for c in E.EXPERIMENTS["e2-long-rest"].cells(names_only=True)
            for s in (0, 1, 2)]
    v = E.chapter_values({**results, "e2-long-rest": rest})
    assert v["e2_grid"] == "`e2-short` + `e2-long` + `e2-long-rest`" and v["e2_mmd-d128-s1024-long_online"] == "60.0 ± 0.0"
    assert {c.name for c in E.EXPERIMENTS["e2"].cells(names_only=True)} == {
        c.name for name in ("e2-short", "e2-long", "e2-long-rest") for c in E.EXPERIMENTS[name].cells(names_only=True)}
    assert v["claim2_verdict"] == "held" and v["claim3_verdict"] == "held" and v["claim4_verdict"] == "held"
    assert v["e3_none_linear"].startswith("30.0") and v["e3_none_n"] == "5"
    assert v["e3tune_lejepa_edge"] == "no" and v["e3tune_edge_rows"] == "none"
    # a row that beats no regularizer but lies far below LeJEPA is not viable: claim 2 fails on parity
    far = "ksd-unsliced-gaussian-gaussian"
    results["e3"] = [{**r, "metrics": {**r["metrics"], "linear_probe_acc": 0.6}} if r["cell"] == far else r for r in e3]
    v = E.chapter_values(results)
    assert v["claim2_verdict"] == "did not hold" and f"below -5): {far} (-20.0 [" in v["claim2_ours"]


def test_the_health_monitor_changes_no_result(tmp_path, monkeypatch):
    """The monitor's bootstrap draws from its own generator: a run with it and one without give the same
    numbers, so a run's identity leaves it out and rows recorded with it count as done without it."""
    base = Config.from_dict(_tiny_cells()[0].config).replace(
        epochs=3, max_steps=None, reg={"kind": "epps_pulley", "slices": 64, "n_points": 17})
    on, off = (E.Cell("m", base.replace(health_bootstrap=b).to_dict(), {"row": "m"}) for b in (19, 0))
    assert E.row_key("t", on.config, 0) == E.row_key("t", off.config, 0)
    assert E.row_key("t", on.config, 0) != E.row_key("t", base.replace(lam=2.0).to_dict(), 0)
    from kerjepa.training import loop
    checks = []

    def health(*args):
        checks.append(args[-1])
        return monitored(*args)

    monitored = loop.embedding_health
    monkeypatch.setattr(loop, "embedding_health", health)
    with_monitor = E._train_measure(on, 0)
    assert checks == [22, 44]                     # after each epoch but the last (it has the final evaluation)
    without = E._train_measure(off, 0)
    assert len(checks) == 2 and with_monitor == without
    assert with_monitor["n_val"] > 0 and "lejepa_probe_acc" in with_monitor   # Table 1's protocol, recorded
    exp = _experiment(E._train_measure, cells=lambda results_dir=None, untuned=False: [on], seeds=(0,))
    E.append_row(tmp_path / "tiny.jsonl", {"key": E.row_key("tiny", on.config, 0), "cell": "m", "seed": 0})
    assert E.plan(_experiment(E._train_measure, cells=lambda results_dir=None, untuned=False: [off], seeds=(0,)),
                  results_dir=tmp_path)[0][3]
    assert E.plan(exp, results_dir=tmp_path)[0][3]
