"""Every benchmark script runs in its ``--quick`` mode and writes sane results.

Each script runs as a subprocess (as a user runs it), with one torch thread: on a shared
2-core machine two threads per process oversubscribe the cores and run many times slower.
Quick results land in ``benchmarks/results/*_quick*`` (git-ignored) or, for scripts whose
quick mode would overwrite committed results, in a temporary folder.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"


def run_script(name: str, *args: str, timeout: int = 300) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONWARNINGS": "ignore"}
    env.pop("AUTODIM_ML100K", None)  # quick runs use built-in data only
    proc = subprocess.run([sys.executable, str(BENCH / name), "--quick", *args], cwd=BENCH,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{name} --quick failed ({proc.returncode}):\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def read_csv(path: Path) -> list[dict[str, str]]:
    assert path.is_file(), f"{path} was not written"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows, f"{path} has no rows"
    return rows


def fresh(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def is_auc(value: str) -> bool:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return 0.4 < v < 1.0


@pytest.mark.slow
def test_throughput():
    for part in ("", "_runs", "_sweep", "_rss"):
        fresh(RESULTS / f"throughput_quick{part}.csv")
    run_script("throughput.py")
    rows = read_csv(RESULTS / "throughput_quick.csv")
    assert {r["backbone"] for r in rows} == {"fm", "deepfm"}
    for r in rows:
        assert float(r["plain samples/s"]) > 0
        for kind in ("hand", "ctrtask", "train_plan"):
            assert float(r[f"{kind} samples/s"]) > 0
            assert float(r[f"{kind} / plain (min/med/max)"].split(" / ")[0]) > 0
    runs = read_csv(RESULTS / "throughput_quick_runs.csv")
    assert {r["backbone"] for r in runs} == {"fm", "deepfm"}
    for r in runs:
        for kind in ("train_plan", "train_plan, 1 batch a call"):
            assert float(r[f"{kind} / plain (min/med/max)"].split(" / ")[0]) > 0
    sweep = read_csv(RESULTS / "throughput_quick_sweep.csv")
    assert len(sweep) == 2 and int(sweep[1]["ids"]) > int(sweep[0]["ids"])
    rss = read_csv(RESULTS / "throughput_quick_rss.csv")
    assert float(rss[0]["peak RSS MiB"]) >= float(rss[0]["RSS before training MiB"]) > 0


@pytest.mark.slow
def test_quant():
    for part in ("", "_runs", "_latency"):
        fresh(RESULTS / f"quant_quick{part}.csv")
    run_script("quant.py")
    runs = read_csv(RESULTS / "quant_quick_runs.csv")
    methods = {r["method"] for r in runs}
    assert {"full", "hybrid", "dims only", "bits only", "quant"} <= methods
    for r in runs:
        if r["method"] != "full" and r.get("test_auc"):
            assert is_auc(r["test_auc"]) and int(r["bytes"]) <= int(r["budget"])
    lat = read_csv(RESULTS / "quant_quick_latency.csv")
    models = {r["model"] for r in lat}
    assert {"float32", "int8", "int4", "int2 field"} <= models
    assert any(m.startswith("hybrid ") for m in models)  # the run's own hybrid plan, packed
    assert all(float(r["x float32"]) > 0 for r in lat)


@pytest.mark.slow
def test_baselines():
    fresh(RESULTS / "baselines_quick.csv")
    run_script("baselines.py")
    rows = read_csv(RESULTS / "baselines_quick.csv")
    plans = {r["plan"] for r in rows}
    assert {"full", "uniform", "mde", "hash", "qr", "memcom"} <= plans
    for r in rows:
        assert is_auc(r["test AUC"]) or r["note"] == "infeasible", r


@pytest.mark.slow
def test_scale():
    fresh(RESULTS / "scale_quick.csv")
    run_script("scale.py")
    rows = {r["measure"]: r for r in read_csv(RESULTS / "scale_quick.csv")}
    for key in ("full D=16: test AUC", "memcom 10x: test AUC", "sseds 10x: test AUC"):
        assert is_auc(rows[key]["value"]), rows[key]
    speeds = [float(r["value"]) for k, r in rows.items() if r["unit"] == "samples/s"]
    assert len(speeds) >= 4 and all(s > 0 for s in speeds)
    assert 0 < float(rows["peak RSS (end)"]["value"]) < 24


@pytest.mark.slow
def test_inference():
    fresh(RESULTS / "inference_quick.csv")
    run_script("inference.py")
    rows = {r["model"]: r for r in read_csv(RESULTS / "inference_quick.csv")}
    assert set(rows) == {"full", "uniform", "mde", "hash", "qr", "memcom", "sparse",
                         "row-pruned", "row-scattered", "select"}
    for r in rows.values():
        assert float(r["ms @1"]) > 0 and float(r["ms @4096"]) > 0
        assert int(r["file bytes"]) > int(r["embedding in file"]) > 0
        # The exported embedding stores exactly what the plan counts, masked forms too,
        # and the loaded one holds it plus a small constant (no dense rows + masks).
        assert r["bytes match"] == "True", r
        assert int(r["resident - plan"]) == int(r["of which rank dirs"]) + int(
            r["of which metadata"]), r
        assert float(r["resident / plan"]) < 1.5, r


@pytest.mark.slow
def test_device_check_on_the_cpu():
    """The GPU check runs its outputs and training parts with ``--device cpu`` (a check of
    the script; the comparison itself needs a GPU machine)."""
    fresh(RESULTS / "device_check_quick.csv")
    out = run_script("device_check.py", "--device", "cpu", "--skip", "latency")
    rows = read_csv(RESULTS / "device_check_quick.csv")
    outputs = {r["model"]: r for r in rows if r["part"] == "outputs"}
    assert {"full", "sparse", "int2", "int1", "memcom 8-bit", "hybrid (sequence fields)"
            } <= set(outputs)
    assert all(r["ok (<= 1e-5, grads 1e-3)"] == "True" for r in outputs.values()), outputs
    train = [r for r in rows if r["part"] == "train"]
    assert len(train) == 5 and all(is_auc(r["cpu test AUC"]) for r in train)
    assert "outputs not matching: none" in out


@pytest.mark.slow
def test_compare():
    from autodim.searchers import list_searchers

    stem = RESULTS / "compare_quick"
    fresh(*(stem.with_suffix(s) for s in (".csv", ".md", ".html")))
    run_script("compare.py")
    rows = read_csv(stem.with_suffix(".csv"))
    methods = {"full", "uniform", "mde", "hash", "qr", "memcom", "uniform-alpha", "oracle",
               *list_searchers()}
    assert {r["method"] for r in rows} == methods
    # planted data: every plan with varying dims is scored against the hidden ranks, and the
    # oracle (it reads them) agrees with them
    oracle = [r for r in rows if r["method"] == "oracle" and r["status"] == "ok"]
    assert oracle and all(float(r["spearman"]) > 0.5 for r in oracle), oracle
    assert {r["ratio"] for r in rows} == {"1", "4", "10"}
    for r in rows:
        assert r["status"] in ("ok", "infeasible", "error"), r
        if r["status"] == "ok":
            assert is_auc(r["test_auc"]), r
            if r["budget_bytes"]:
                assert int(r["bytes"]) <= int(r["budget_bytes"]), r
        else:
            assert r["note"], r  # an infeasible or failing method says why
    # searchers report their search cost relative to one full training
    ratios = [float(r["search/full"]) for r in rows
              if r["kind"] == "searcher" and r["status"] == "ok"]
    assert ratios and all(x > 0 and math.isfinite(x) for x in ratios)
    md = stem.with_suffix(".md").read_text()
    assert "test AUC (mean ± std)" in md and "tiny" in md
    assert "plotly" in stem.with_suffix(".html").read_text()
    # resumable: a second run finds every combo done and only rebuilds the report
    out = run_script("compare.py")
    assert "seed 0: ok" not in out
    assert len(read_csv(stem.with_suffix(".csv"))) == len(rows)


@pytest.mark.slow
def test_search_darts(tmp_path):
    out = tmp_path / "search_darts_quick.csv"  # its default --out is the committed file
    run_script("search_darts.py", "--out", str(out))
    rows = read_csv(out)
    assert {"darts", "autodim"} <= {r["method"] for r in rows}
    assert all(is_auc(r["test_auc"]) for r in rows)


@pytest.mark.slow
def test_search_pruning():
    fresh(RESULTS / "search_pruning_quick.csv")
    run_script("search_pruning.py")
    rows = read_csv(RESULTS / "search_pruning_quick.csv")
    assert {"pep", "sseds", "magprune"} <= {r["method"] for r in rows}
    for r in rows:
        assert is_auc(r["test_auc"]) or r["note"].startswith("infeasible"), r


@pytest.mark.slow
def test_search_optembed():
    fresh(RESULTS / "search_optembed_quick.csv")
    run_script("search_optembed.py")
    rows = read_csv(RESULTS / "search_optembed_quick.csv")
    assert any(r["method"].startswith("optembed") for r in rows)
    assert all(is_auc(r["test AUC"]) for r in rows)


@pytest.mark.skipif(not (BENCH / "study_front.py").exists(), reason="no study_front.py")
@pytest.mark.slow
def test_study_front(tmp_path):
    run_script("study_front.py", "--results", str(tmp_path))  # default: the committed file
    rows = read_csv(tmp_path / "study_front.csv")
    assert {r["budget"] for r in rows} >= {"10x", "40x"}
    assert all(is_auc(r["test_auc"]) for r in rows if r["test_auc"])


def test_common_helpers_format_and_write(tmp_path):
    """The helpers every script shares: dims as text, the Markdown table, the CSV."""
    sys.path.insert(0, str(BENCH))
    try:
        import _common
    finally:
        sys.path.remove(str(BENCH))
    from autodim.data.synthetic import make_planted
    from autodim.plan import DimensionPlan

    schema = make_planted("tiny", rows=600, seed=0).schema
    dims = {n: [0, 1, 2, 4, 8][i % 5] for i, n in enumerate(schema.names)}
    plan = DimensionPlan.from_dims(schema, 8, dims)
    assert _common.dims_text(plan) == " ".join(str(dims[n]) for n in schema.names)
    assert _common.dims_text(plan, ",").split(",") == [str(dims[n]) for n in schema.names]
    assert _common.results_stem("scale", True) == "scale_quick"
    assert _common.results_stem("scale", False) == "scale"
    rows = [{"a": 1, "b": 0.123456}, {"a": 2, "c": None, "b": 1234.5}]
    assert _common.markdown_table(rows, title="T") == (
        "### T\n\n| a | b | c |\n|---|---|---|\n| 1 | 0.1235 |  |\n| 2 | 1,234 |  |\n")
    path = _common.write_csv(tmp_path / "sub" / "t.csv", rows)
    assert read_csv(path) == [{"a": "1", "b": "0.123456", "c": ""},
                              {"a": "2", "b": "1234.5", "c": ""}]
    args = _common.parser("d", ml100k="folder", threads="n").parse_args(["--quick"])
    assert (args.quick, args.ml100k, args.threads) == (True, None, 1)
