"""The ``autodim`` command line.

Every command turns bad input into a one-line ``error: ...`` naming the file, field or
value at fault and exits with status 2 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from autodim.defaults import DEFAULT_LR
from autodim.errors import AutodimError, ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Search per-field embedding dims under a memory budget and ship the "
                       "compact model.")
data_app = typer.Typer(no_args_is_help=True, help="Encode data sources and show schemas.")
app.add_typer(data_app, name="data")

_STATE: dict[str, Any] = {"debug": False, "quiet": False, "progress": None}


def echo(msg: str = "") -> None:
    if not _STATE["quiet"]:
        typer.echo(msg)


def _version(value: bool) -> None:
    if value:
        from autodim import __version__

        typer.echo(f"autodim {__version__}")
        raise typer.Exit()


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
          quiet: bool = typer.Option(False, "--quiet", "-q",
                                     help="Print results only (no progress); also accepted "
                                          "after the command."),
          progress: Optional[bool] = typer.Option(
              None, "--progress/--no-progress",
              help="Show progress (trials, epochs, data preparation). Default: on when stdout "
                   "is a terminal; --progress elsewhere prints progress lines on stderr."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    _STATE["debug"] = _STATE["debug"] or debug
    _STATE["quiet"] = _STATE["quiet"] or quiet
    if progress is not None:
        _STATE["progress"] = progress


# -- shared options ------------------------------------------------------------------------
DATA_HELP = ("Data source: 'synthetic' (built-in planted data; 'synthetic:tiny', "
             "'synthetic:criteo_kaggle'), a folder of RecBole atomic files, a Criteo TSV, "
             "or a CSV/Parquet file with --spec.")


DATA_OPT_HELP = ("A loader option KEY=VALUE (repeatable), the keys of a study's 'dataset:' "
                 "(e.g. seed=7, rows=5000, min_count=2, split.val=0.1).")


def _parse_data_opts(items: list[str] | None) -> dict[str, Any]:
    """``--data-opt KEY=VALUE`` items -> loader options (values read as YAML scalars;
    ``a.b=v`` sets ``{"a": {"b": v}}``)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--data-opt {item!r}: expected KEY=VALUE (e.g. --data-opt seed=7)")
        try:
            parsed = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            parsed = value
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--data-opt {item!r}: {part!r} is already set to a value")
        node[leaf] = parsed
    return out


def _data_options(rows: int | None, spec: Path | None, data_seed: int | None,
                  data_opt: list[str] | None = None) -> dict[str, Any]:
    opts = _parse_data_opts(data_opt)
    for key, flag, value in (("rows", "--rows", rows), ("spec", "--spec", spec),
                             ("seed", "--seed", data_seed)):
        if value is None:
            continue
        if key in opts and opts[key] != value:
            raise ConfigError(f"{flag} {value} and --data-opt {key}={opts[key]} disagree")
        opts[key] = str(value) if key == "spec" else value
    return opts


def _cli_words(msg: str) -> str:
    """A loader's message in the command line's terms (its API says ``spec=...``)."""
    return (msg.replace("pass spec=...", "pass --spec SPEC.yaml")
               .replace("(spec=... or", "(--spec SPEC.yaml or")
               .replace("unknown data option", "unknown --data-opt key"))


def load_source(source: str, rows: int | None = None, spec: Path | None = None,
                data_seed: int | None = None, refresh: bool = False,
                data_opt: list[str] | None = None):
    from autodim.data import load_data
    from autodim.errors import DataError

    opts = _data_options(rows, spec, data_seed, data_opt)
    with _progress_status(f"preparing data {source}"):
        try:
            return load_data(source, refresh=refresh, **opts)
        except DataError as exc:
            raise DataError(_cli_words(str(exc))) from None
        except TypeError as exc:  # make_planted(**options) with a key it does not know
            raise DataError(f"data source {source!r}: bad --data-opt ({exc})") from None


ACCELERATOR_HELP = "Lightning accelerator: cpu, gpu (cuda), mps or auto."
DEVICES_HELP = "Devices: a count (2), 'auto', -1 (all) or indices '0,1'."
STRATEGY_HELP = "Lightning strategy: auto, ddp, ddp_spawn, ... (ddp on CPU uses gloo)."


@contextlib.contextmanager
def _progress_display():
    """The command's progress display (see autodim.progress), active for the block."""
    from autodim import progress

    display = progress.choose(quiet=_STATE["quiet"], asked=_STATE["progress"])
    with progress.activate(display):
        yield display


@contextlib.contextmanager
def _progress_status(text: str):
    """A spinner/line for ``text`` on the active display, or a display of its own."""
    from autodim import progress

    if progress.current().enabled:
        with progress.current().status(text):
            yield
        return
    with _progress_display() as display, display.status(text):
        yield


def _plan_from_arg(arg: str, schema, D: int, budget: str | None):
    """``full``, a baseline name (needs --budget) or a plan JSON path."""
    from autodim.baselines import BASELINES, baseline_plan
    from autodim.budget import full_bytes, parse_budget
    from autodim.plan import DimensionPlan

    if arg in BASELINES:
        b = parse_budget(budget, full_bytes(schema, D)) if budget else None
        return baseline_plan(arg, schema, D, b)
    path = Path(arg)
    if not path.suffix == ".json" and not path.exists():
        raise ConfigError(f"--plan {arg!r}: not a plan file nor one of {sorted(BASELINES)}")
    plan = DimensionPlan.load(path)
    plan.check_schema(schema)
    return plan


def _print_plan(plan) -> None:
    from autodim._table import format_table
    from autodim.budget import format_bytes

    rows = plan.summary()
    for r in rows:
        r["share"] = f"{100 * r['share']:.1f}%"
    typer.echo(format_table(rows, ["field", "rows", "dim", "align", "bits", "compression",
                                   "bytes", "share"]))
    typer.echo(f"total {plan.num_bytes():,} B ({format_bytes(plan.num_bytes())}); full D={plan.D} "
               f"table {plan.full_bytes():,} B; compression {plan.compression():.2f}x")


# -- commands ------------------------------------------------------------------------------
@app.command()
def train(
    data: str = typer.Option("synthetic", "--data", "-d", help=DATA_HELP),
    plan: str = typer.Option("full", "--plan", "-p",
                             help="'full', a baseline (uniform, mde, hash, qr, memcom; needs "
                                  "--budget) or a plan JSON."),
    budget: Optional[str] = typer.Option(None, "--budget", "-b",
                                         help="For baseline plans: '10x', '2MB' or bytes."),
    backbone: str = typer.Option("fm", help="lr, fm, deepfm or dcnv2."),
    dim: int = typer.Option(16, "--dim", "-D", help="Common embedding dim D."),
    epochs: int = typer.Option(10, help="Maximum epochs (early stopping on val AUC)."),
    batch_size: int = typer.Option(1024, help="Training batch size."),
    lr: float = typer.Option(DEFAULT_LR, help="Learning rate."),
    patience: int = typer.Option(2, help="Early-stopping patience in epochs."),
    seed: int = typer.Option(0, help="Seed of initialisation and shuffling."),
    rows: Optional[int] = typer.Option(None, help="Rows to generate (synthetic data)."),
    spec: Optional[Path] = typer.Option(None, help="Field spec YAML for CSV/Parquet data."),
    data_opt: Optional[list[str]] = typer.Option(None, "--data-opt", help=DATA_OPT_HELP),
    accelerator: str = typer.Option("cpu", help=ACCELERATOR_HELP),
    devices: str = typer.Option("1", help=DEVICES_HELP),
    strategy: str = typer.Option("auto", help=STRATEGY_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="torch CPU threads (default: torch's)."),
    save_weights: Optional[Path] = typer.Option(None, help="Write the trained weights "
                                                "(safetensors) here."),
):
    """Train a compact model from a plan and print test AUC, logloss, bytes and compression.

    Examples:

      autodim train --data synthetic

      autodim train --data ~/.cache/autodim/ml-100k --plan mde --budget 10x

      autodim train --data clicks.csv --spec clicks.yaml --plan plan.json

      autodim train --data synthetic --accelerator gpu --devices 2 --strategy ddp
    """
    from autodim.api import retrain
    from autodim.study.config import parse_devices
    from autodim.task import TrainConfig

    if threads:
        import torch

        torch.set_num_threads(threads)
    dev = parse_devices("--devices", devices)
    ds = load_source(data, rows, spec, data_opt=data_opt)
    p = _plan_from_arg(plan, ds.schema, dim, budget)
    cfg = TrainConfig(max_epochs=epochs, batch_size=batch_size, lr=lr, patience=patience,
                      seed=seed, accelerator=accelerator.lower(), strategy=strategy,
                      devices=list(dev) if isinstance(dev, tuple) else dev)
    echo(f"training {backbone} on {data}: {ds.schema.num_fields} fields, {len(ds.train):,} train "
         f"rows, plan {p.searcher.get('name')} ({p.num_bytes():,} B)")
    with _progress_display():
        result = retrain(p, ds, cfg, backbone=backbone)
    m = result.metrics
    from autodim.metrics import format_auc

    typer.echo(f"test AUC {format_auc(m['test_auc'])}")
    typer.echo(f"test logloss {m['test_logloss']:.4f}")
    typer.echo(f"val AUC {format_auc(m['val_auc'])}")
    typer.echo(f"bytes {int(m['num_bytes']):,}")
    typer.echo(f"compression {m['compression']:.2f}x")
    typer.echo(f"epochs {int(m['epochs'])}/{epochs}")
    if "bayes_auc" in ds.meta:
        typer.echo(f"bayes AUC {ds.meta['bayes_auc']:.4f}")
    if save_weights is not None:
        from autodim.export import save_weights as _save

        _save(result.task, save_weights)
        echo(f"weights written to {save_weights}")


@app.command()
def inspect(plan_path: Path = typer.Argument(..., help="A plan JSON (or an export folder).")):
    """Print a plan's per-field table (dim, rows, bytes, hashing, share) and compression.

    Example:

      autodim inspect runs/plan.json
    """
    from autodim.plan import DimensionPlan

    if plan_path.is_dir() and (plan_path / "plan.json").is_file():
        plan_path = plan_path / "plan.json"  # an export folder
    plan = DimensionPlan.load(plan_path)
    s = plan.searcher or {}
    echo(f"plan {plan_path}: searcher {s.get('name')}, D={plan.D}, seed {plan.seed}, budget "
         f"{plan.budget_bytes if plan.budget_bytes is not None else '-'} B")
    _print_plan(plan)
    if plan.metrics:
        typer.echo("metrics: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in plan.metrics.items()))


# -- studies: search / pareto / export ---------------------------------------------------
def _warn(msg: str) -> None:
    typer.echo(f"warning: {msg}", err=True)


def _parse_settings(items: list[str] | None) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. --set epochs=2)")
        out[key.strip()] = yaml.safe_load(value)
    return out


@app.command()
def search(
    study: Optional[Path] = typer.Argument(
        None, help="A study file (studies/*.yaml). Leave it out for a single search run "
                   "(--method, --data, --budget, --out)."),
    n_trials: Optional[int] = typer.Option(None, "--n-trials", "-n",
                                           help="Search trials the study should hold when "
                                                "done (baselines come on top)."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL (default: a journal "
                                                     "file in the study's folder); e.g. "
                                                     "postgresql://user@host/db for many "
                                                     "workers."),
    resume: bool = typer.Option(False, "--resume", help="Continue an existing study: finished "
                                                        "trials are kept, trials left running "
                                                        "by a crash are re-queued."),
    method: Optional[list[str]] = typer.Option(None, "--method", "-m",
                                               help="Study: restrict to these methods "
                                                    "(repeatable). Single run: the searcher."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir",
                                           help="Study folder (default <output>/<name> next "
                                                "to the study file)."),
    threads: Optional[int] = typer.Option(None, "--threads",
                                          help="torch CPU threads (default: the study's "
                                               "'threads', 1)."),
    data: str = typer.Option("synthetic", "--data", "-d", help="Single run: " + DATA_HELP),
    budget: str = typer.Option("10x", "--budget", "-b",
                               help="Single run: '10x', '2MB' or a byte count."),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="Single run: where to write the plan JSON."),
    retrain: bool = typer.Option(False, "--retrain", help="Single run: retrain the compact "
                                                          "model and store its metrics."),
    setting: Optional[list[str]] = typer.Option(None, "--set",
                                                help="Single run: a searcher setting "
                                                     "KEY=VALUE (repeatable)."),
    quick: bool = typer.Option(False, "--quick", help="Single run: the searcher's quick "
                                                      "settings (seconds on small data)."),
    backbone: str = typer.Option("fm", help="Single run: lr, fm, deepfm or dcnv2."),
    dim: int = typer.Option(16, "--dim", "-D", help="Single run: common embedding dim D."),
    dims: str = typer.Option("0,1,2,4,8,16", "--dims", help="Single run: candidate dims "
                                                             "(0: drop the field)."),
    epochs: int = typer.Option(2, help="Single run: the searcher's training epochs."),
    retrain_epochs: int = typer.Option(10, help="Single run: retrain epochs (early stopping)."),
    lr: float = typer.Option(DEFAULT_LR, help="Single run: learning rate."),
    batch_size: int = typer.Option(1024, help="Single run: batch size."),
    seed: int = typer.Option(0, help="Single run: seed."),
    rows: Optional[int] = typer.Option(None, help="Single run: rows (synthetic data)."),
    spec: Optional[Path] = typer.Option(None, help="Single run: field spec for CSV/Parquet."),
    data_opt: Optional[list[str]] = typer.Option(
        None, "--data-opt", help=DATA_OPT_HELP + " With a STUDY: overrides its 'dataset:'."),
    accelerator: Optional[str] = typer.Option(None, help=ACCELERATOR_HELP + " With a STUDY: "
                                              "overrides train.accelerator."),
    devices: Optional[str] = typer.Option(None, help=DEVICES_HELP),
    strategy: Optional[str] = typer.Option(None, help=STRATEGY_HELP),
):
    """Run a budget-constrained study (or one searcher) and print the Pareto front.

    A study trains each trial's compact model (searched dims + MEmCom) and records
    (validation AUC, bytes) with the baselines on the same front; results land in the
    study's folder (journal storage, per-trial plans and weights, pareto.csv/json).

    Examples:

    \b
      autodim search studies/quick.yaml
      autodim search studies/synthetic.yaml --n-trials 40 --method darts --method sseds
      autodim search studies/synthetic.yaml --resume
      autodim search studies/ml100k.yaml --storage postgresql://me@db/autodim --resume
      autodim search --method blackbox --data synthetic --budget 10x --out plan.json --retrain
    """
    if study is None:
        if threads:
            import torch

            torch.set_num_threads(threads)
        _search_once(method, data, budget, out, retrain, setting, quick, backbone, dim, dims,
                     epochs, retrain_epochs, lr, batch_size, seed, rows, spec, data_opt,
                     _device_settings(accelerator, devices, strategy))
        return
    from dataclasses import replace

    from autodim.study.config import StudyConfig
    from autodim.study.runner import run_study

    if out is not None or retrain or setting:
        raise ConfigError("--out/--retrain/--set belong to the single-run form (no STUDY); a "
                          "study keeps every trial's plan in its folder")
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out-dir {out_dir}: is a file; give a folder (it is created if "
                          "missing)")
    config = StudyConfig.load(study)
    if data_opt:
        config = replace(config, dataset={**config.dataset, **_parse_data_opts(data_opt)})
    dev = _device_settings(accelerator, devices, strategy)
    if "devices" in dev:
        from autodim.study.config import check_one_device

        check_one_device("--devices", dev["devices"])
    if dev:
        config = replace(config, train=replace(config.train, **dev),
                         search_train=replace(config.search_train, **dev))
    with _progress_display():
        result = run_study(config, n_trials=n_trials, storage=storage, resume=resume,
                           methods=list(method) if method else None, out_dir=out_dir,
                           echo=echo, warn=_warn, threads=threads)
    echo()
    echo(f"Pareto front of study {result.name!r} (feasible trials; bytes <= budget):")
    typer.echo(result.front_table())
    _print_front_extras(result)
    echo(f"results in {result.folder} (pareto.csv, pareto.json); next: autodim pareto "
         f"{study}  |  autodim export {study} --best-under {config.budgets[0]}")


def _print_front_extras(result) -> None:
    for line in result.summary_lines():
        echo(line)


def _device_settings(accelerator: str | None, devices: str | None,
                     strategy: str | None) -> dict[str, Any]:
    """The ``--accelerator/--devices/--strategy`` given, as TrainSettings fields."""
    from autodim.study.config import parse_devices

    out: dict[str, Any] = {}
    if accelerator is not None:
        out["accelerator"] = accelerator.lower()
    if devices is not None:
        out["devices"] = parse_devices("--devices", devices)
    if strategy is not None:
        out["strategy"] = strategy
    return out


def _search_once(method, data, budget, out, retrain, setting, quick, backbone, dim, dims,
                 epochs, retrain_epochs, lr, batch_size, seed, rows, spec, data_opt,
                 device) -> None:
    from autodim.api import search_plan
    from autodim.budget import full_bytes, parse_budget
    from autodim.searchers import get_searcher

    if not method or len(method) != 1:
        raise ConfigError("a single search run needs exactly one --method (or pass a study "
                          "file: autodim search studies/quick.yaml)")
    if out is None:
        raise ConfigError("a single search run needs --out PLAN.json (where to write the plan)")
    name = method[0]
    get_searcher(name)  # an unknown method fails before the data is loaded
    try:
        cand = tuple(int(x) for x in dims.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--dims {dims!r}: expected integers like 1,2,4,8,16") from None
    ds = load_source(data, rows, spec, seed if rows is not None else None, data_opt=data_opt)
    nbytes = parse_budget(budget, full_bytes(ds.schema, dim))
    if isinstance(device.get("devices"), tuple):
        device["devices"] = list(device["devices"])
    echo(f"{name} on {data}: {ds.schema.num_fields} fields, budget {budget} = {nbytes:,} B")
    with _progress_display():
        plan, _ = search_plan(name, ds, budget=nbytes, D=dim, candidate_dims=cand,
                              backbone=backbone, settings=_parse_settings(setting),
                              epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                              retrain=retrain, retrain_epochs=retrain_epochs, quick=quick,
                              train_options=device)
    plan.save(out)
    _print_plan(plan)
    if plan.metrics:
        typer.echo("metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in plan.metrics.items()
                                           if isinstance(v, float)))
    echo(f"plan written to {out}")


@app.command()
def pareto(
    study: Path = typer.Argument(..., help="The study file or its folder."),
    storage: Optional[str] = typer.Option(None, help="Storage URL if not the folder's "
                                                     "journal file."),
    html: Optional[Path] = typer.Option(None, "--html", help="Where to write the figure "
                                                             "(default <folder>/pareto.html)."),
    all_trials: bool = typer.Option(False, "--all", help="List every complete trial, not "
                                                         "only the front."),
    no_html: bool = typer.Option(False, "--no-html", help="Do not write the figure."),
    png: bool = typer.Option(False, "--png", help="Also write the figure as PNG beside the "
                                                   "HTML (needs the [static] extra)."),
    svg: bool = typer.Option(False, "--svg", help="Also write the figure as SVG beside the "
                                                   "HTML (needs the [static] extra)."),
):
    """Print a study's Pareto front and write an interactive plot (AUC vs bytes).

    Every trial is coloured by method, baselines are diamonds, budgets are dashed lines;
    hovering a point shows its plan. Also rewrites pareto.csv and pareto.json.

    Examples:

    \b
      autodim pareto studies/quick.yaml
      autodim pareto studies/_results/quick --all --html front.html
    """
    from autodim.study.result import load_study

    formats = _static_formats(png, svg)
    result = load_study(study, storage=storage)
    typer.echo(result.front_table(all_trials=all_trials))
    _print_front_extras(result)
    paths = result.write_pareto()
    if not no_html:
        paths.append(result.write_html(html))
    if formats:
        from autodim.viz.static import write_images

        stem = Path(html) if html is not None else result.folder / "pareto.html"
        fig = result.figure()
        with _progress_status("rendering images"):
            paths += write_images([fig] * len(formats),
                                  [stem.with_suffix(f".{f}") for f in formats])
    echo("written: " + ", ".join(str(p) for p in paths))


def _static_formats(png: bool, svg: bool) -> list[str]:
    """The image formats asked for; checks kaleido and a browser before any work."""
    formats = [f for f, on in (("png", png), ("svg", svg)) if on]
    if formats:
        from autodim.viz.static import check_static

        check_static()
    return formats


@app.command()
def export(
    study: Path = typer.Argument(..., help="The study file or its folder."),
    trial: Optional[int] = typer.Option(None, "--trial", "-t", help="Export this trial."),
    best_under: Optional[str] = typer.Option(None, "--best-under",
                                             help="Export the best trial (validation AUC) "
                                                  "within this size: bytes, '2MB' or '10x'."),
    pareto_front: bool = typer.Option(False, "--pareto", help="Export every trial on the "
                                                              "Pareto front."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default "
                                                                 "<study folder>/export/...)."),
    storage: Optional[str] = typer.Option(None, help="Storage URL if not the folder's "
                                                     "journal file."),
):
    """Export compact models: plan JSON, weights (safetensors), TorchRec and FuxiCTR configs.

    Writes plan.json, weights.safetensors, model.json, encoders.json (the data's fitted
    encoders), torchrec.json (one table per feature, id transforms, weight keys),
    fuxictr.yaml and fuxictr_feature_map.json per trial, plus pareto.csv/json. Each folder
    is written under a temporary name and renamed into place. Score raw rows with
    autodim predict FOLDER ROWS.csv or autodim.load_model(FOLDER).predict(rows).

    Examples:

    \b
      autodim export studies/quick.yaml --best-under 10x
      autodim export studies/quick.yaml --trial 7 --out shipped/
      autodim export studies/_results/quick --pareto
    """
    from autodim.study.result import load_study

    chosen = sum([trial is not None, best_under is not None, pareto_front])
    if chosen != 1:
        raise ConfigError("choose exactly one of --trial N, --best-under BYTES or --pareto")
    if out is not None:
        from autodim.export import check_export_target

        # A file there is a one-line error, before any work (--pareto: the trial folders
        # go under --out, and each is checked as it is written).
        check_export_target(out / "trial_0" if pareto_front else out)
    result = load_study(study, storage=storage)
    base = out if out is not None else result.folder / "export"
    if pareto_front:
        numbers = [int(n) for n in result.front["trial"]] if not result.front.empty else []
        if not numbers:
            raise ConfigError(f"study {result.name!r} has no complete feasible trial to export")
        root = base if out is not None else base / "pareto"
        targets = [(n, root / f"trial_{n}") for n in numbers]
    else:
        n = trial if trial is not None else result.best_under(best_under)
        root = base if out is not None else base / f"trial_{n}"
        targets = [(n, root)]
    for n, folder in targets:
        paths = result.export(n, folder)
        plan = result.plan(n)
        echo(f"trial {n} ({result.trial(n).user_attrs.get('method')}): "
             f"{plan.num_bytes():,} B, {plan.compression():.1f}x -> {folder}")
        for w in paths["warnings"]:
            _warn(f"trial {n}: {w}")
    result.write_pareto(root)
    typer.echo(f"exported {len(targets)} trial(s) to {root}")


@app.command()
def predict(
    shipped: Path = typer.Argument(..., help="An export folder (autodim export's output)."),
    data: Path = typer.Argument(..., help="Rows to score: a CSV/Parquet file, a RecBole "
                                          "folder or .inter file, or a Criteo TSV, with the "
                                          "training data's field columns."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the scores here (CSV "
                                                                 "with a 'score' column, one "
                                                                 "row per input row); "
                                                                 "default: print them."),
):
    """Score raw rows with a shipped model: its encoders turn values into ids (values not
    seen in training read the out-of-vocabulary row), the model gives click probabilities.

    Examples:

    \b
      autodim predict shipped/ new_rows.csv
      autodim predict shipped/ ~/.cache/autodim/ml-100k --out scores.csv
    """
    from autodim._io import atomic_write_text
    from autodim.export import load_shipped

    if out is not None and out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give a file name (e.g. scores.csv)")
    from autodim.runtime import tune_allocator

    model = load_shipped(shipped)
    tune_allocator()  # a batch's temporaries stay with the process (autodim.runtime)
    scores = model.predict(data)
    text = "score\n" + "".join(f"{s:.6f}\n" for s in scores.tolist())
    if out is None:
        typer.echo(text, nl=False)
        return
    atomic_write_text(out, text)
    echo(f"{len(scores):,} scores written to {out}")


@app.command()
def report(
    study: Path = typer.Argument(..., help="The study file or its folder."),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="Where to write the page (default "
                                            "<study folder>/report.html)."),
    budget: Optional[str] = typer.Option(None, "--budget", "-b",
                                         help="Choose the plan under this budget: a budget "
                                              "of the study, '10x', '2MB' or bytes (default: "
                                              "the study's first budget)."),
    storage: Optional[str] = typer.Option(None, help="Storage URL if not the folder's "
                                                     "journal file."),
    png: bool = typer.Option(False, "--png", help="Also write every figure as PNG into "
                                                   "<report>_figures/ ([static] extra)."),
    svg: bool = typer.Option(False, "--svg", help="Also write every figure as SVG into "
                                                   "<report>_figures/ ([static] extra)."),
):
    """Write one self-contained HTML report of a study (opens offline).

    The page holds the Pareto figure and table, the chosen plan (best validation AUC
    within the budget), the plans compared per field (planted ranks on synthetic data),
    where their bytes go, each method's search dynamics, Optuna's optimisation history
    and hyperparameter importances, and the study's settings.

    Examples:

    \b
      autodim report studies/quick.yaml
      autodim report studies/_results/quick --out quick.html --budget 10x
    """
    from autodim.study.result import load_study
    from autodim.viz.report import write_report

    formats = _static_formats(png, svg)
    result = load_study(study, storage=storage)
    path = write_report(result, out, budget=budget)
    if formats:
        from autodim.viz.report import report_sections
        from autodim.viz.static import figure_file_names, write_images

        figs = [f for sec in report_sections(result, budget=budget) for f in sec.figures]
        folder = path.with_name(path.stem + "_figures")
        targets = [folder / n for f in formats for n in figure_file_names(figs, f)]
        with _progress_status(f"rendering {len(targets)} images"):
            write_images(figs * len(formats), targets)
        echo(f"{len(targets)} image(s) written to {folder}")
    chosen = result.choose(budget)
    if chosen is not None:
        echo(f"chosen plan: trial {chosen} ({result.trial(chosen).user_attrs.get('method')})")
    typer.echo(f"report written to {path}")


STARTER_FILES = ("study.yaml", "search_space.yaml")


@app.command()
def init(
    folder: Path = typer.Argument(Path("."), help="Where to write the starter files "
                                                  "(created if missing)."),
    force: bool = typer.Option(False, "--force", help="Overwrite files already there."),
):
    """Write a starter study (study.yaml) and search space (search_space.yaml) to edit.

    The starter runs as it is (a few minutes on the built-in planted data); its comments
    say how to point it at your own CSV/Parquet, RecBole or Criteo data.

    Example:

    \b
      autodim init my_study
      autodim search my_study/study.yaml
    """
    from importlib import resources

    from autodim._io import atomic_write_text

    targets = [folder / name for name in STARTER_FILES]
    there = [str(p) for p in targets if p.exists()]
    if there and not force:
        raise ConfigError(f"{', '.join(there)}: already there (pass --force to overwrite)")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    starter = resources.files("autodim") / "starter"
    for name, path in zip(STARTER_FILES, targets):
        atomic_write_text(path, (starter / name).read_text(encoding="utf-8"))
        echo(f"wrote {path}")
    typer.echo(f"next: autodim search {folder / 'study.yaml'}")


@data_app.command("prepare")
def data_prepare(
    source: str = typer.Argument(..., help=DATA_HELP),
    spec: Optional[Path] = typer.Option(None, help="Field spec YAML for CSV/Parquet."),
    rows: Optional[int] = typer.Option(None, help="Rows (synthetic data)."),
    refresh: bool = typer.Option(False, help="Re-encode even if a cache exists."),
    data_opt: Optional[list[str]] = typer.Option(None, "--data-opt", help=DATA_OPT_HELP),
):
    """Encode a source into the cache (ids as .npy, schema and encoders as JSON).

    Example:

      autodim data prepare ~/.cache/autodim/ml-100k
    """
    ds = load_source(source, rows, spec, refresh=refresh, data_opt=data_opt)
    _print_schema(ds)


@data_app.command("info")
def data_info(
    source: str = typer.Argument(..., help=DATA_HELP),
    spec: Optional[Path] = typer.Option(None, help="Field spec YAML for CSV/Parquet."),
    rows: Optional[int] = typer.Option(None, help="Rows (synthetic data)."),
    data_opt: Optional[list[str]] = typer.Option(None, "--data-opt", help=DATA_OPT_HELP),
):
    """Print a source's schema: fields, kinds, vocabulary sizes, split sizes.

    Example:

      autodim data info synthetic
    """
    _print_schema(load_source(source, rows, spec, data_opt=data_opt))


def _print_schema(ds) -> None:
    from autodim._table import format_table

    s = ds.schema
    planted = ds.meta.get("planted_ranks", {})
    rows = []
    for f in s.fields:
        row = {"field": f.name, "kind": f.kind, "vocab": f.vocab_size, "width": f.width}
        if f.freqs is not None:
            row["seen ids"] = int((f.freqs[1:] > 0).sum())
        if planted:
            row["planted rank"] = planted.get(f.name)
        rows.append(row)
    typer.echo(format_table(rows))
    typer.echo(f"rows: train {len(ds.train):,}, val {len(ds.val):,}, test {len(ds.test):,}; "
               f"positive rate {float(ds.train.labels.mean()):.3f}; fingerprint {s.fingerprint()}")
    if "bayes_auc" in ds.meta:
        typer.echo(f"bayes AUC (test) {ds.meta['bayes_auc']:.4f}")


# Options that belong to the program, not to one command: accepted anywhere before "--".
_GLOBAL_FLAGS = {"-q": ("quiet", True), "--quiet": ("quiet", True), "--debug": ("debug", True),
                 "--progress": ("progress", True), "--no-progress": ("progress", False)}


def _split_global_flags(argv: list[str]) -> tuple[list[str], dict[str, bool]]:
    """Take ``-q``/``--quiet``/``--debug``/``--[no-]progress`` out of ``argv`` wherever they
    stand (Click only knows them before the command), so ``autodim train -q`` works like
    ``autodim -q train``."""
    flags: dict[str, Any] = {"quiet": False, "debug": False, "progress": None}
    rest: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            rest += argv[i:]
            break
        if arg in _GLOBAL_FLAGS:
            key, value = _GLOBAL_FLAGS[arg]
            flags[key] = value
        else:
            rest.append(arg)
    return rest, flags


def _click_exceptions():
    """The exceptions module of the Click that the installed Typer runs on (Typer >= 0.24
    bundles its own copy as ``typer._click``; older ones use the ``click`` package)."""
    import importlib

    core = next(c for c in typer.core.TyperCommand.__mro__ if c.__name__ == "Command")
    return importlib.import_module(core.__module__.rsplit(".", 1)[0] + ".exceptions")


def _usage_line(exc, command, argv: list[str]) -> str:
    """A Click usage error as one line, keeping the ``--help`` hint."""
    ctx = getattr(exc, "ctx", None)
    msg = " ".join(exc.format_message().split()).rstrip(".")
    if ctx is not None:
        path = ctx.command_path
    else:  # some parser errors carry no context: the command named in argv
        names = ["autodim"]
        for arg in argv:
            sub = getattr(command, "commands", {}).get(arg)
            if sub is None:
                if not arg.startswith("-"):
                    break
                continue
            names.append(arg)
            command = sub
        path = " ".join(names)
    return f"error: {msg}; see '{path} --help'"


def _os_error_line(exc: OSError) -> str:
    what = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None:
        return f"error: {what}: {exc.filename}"
    return f"error: {what}"


class _QuietInterrupt:
    """A logging filter for Optuna's trial runner: after Ctrl-C it would log the
    KeyboardInterrupt's traceback (from a searcher's inner study) and "failed with value
    None"; the command says ``interrupted`` instead."""

    def __init__(self) -> None:
        self.seen = False

    def filter(self, record) -> bool:
        exc = record.exc_info[0] if record.exc_info else None
        if exc is not None and issubclass(exc, KeyboardInterrupt):
            self.seen = True
            return False
        return not (self.seen and "failed with value None" in record.getMessage())


def _quiet_interrupts() -> None:
    import logging

    logger = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _QuietInterrupt) for f in logger.filters):
        logger.addFilter(_QuietInterrupt())


def _eof_line(exc: EOFError) -> str:
    return f"error: unexpected end of input, a truncated file? ({exc or 'EOFError'})"


def _error_line(exc: BaseException) -> str:
    """The one ``error: …`` line for a failure that is the input's or the machine's."""
    if isinstance(exc, AutodimError):
        return f"error: {exc}"
    if isinstance(exc, OSError):
        return _os_error_line(exc)
    if isinstance(exc, EOFError):
        return _eof_line(exc)
    if isinstance(exc, RecursionError):
        return "error: input nested too deeply (recursion limit reached)"
    return "error: out of memory (try fewer rows, a smaller batch or smaller tables)"


def main(argv: list[str] | None = None) -> int:  # noqa: C901 - one except per error kind
    """Console entry point: run the app, turning user errors into one line and exit code 2.

    Usage errors (unknown option or command, bad value, missing argument), autodim's own
    errors and the operating system's (files, disk, memory) print one ``error: ...`` line
    and exit 2; Ctrl-C prints ``interrupted`` and exits 130. ``--debug`` (or
    ``AUTODIM_DEBUG=1``) re-raises instead, for the traceback.
    """
    argv, flags = _split_global_flags(list(sys.argv[1:] if argv is None else argv))
    debug = flags["debug"] or os.environ.get("AUTODIM_DEBUG") == "1"
    _STATE.update(debug=debug, quiet=flags["quiet"], progress=flags["progress"])
    if os.environ.get("LOCAL_RANK", "0") != "0":
        # A DDP worker process Lightning started by re-running this command: rank 0 speaks.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    cx = _click_exceptions()
    if not debug:
        _quiet_interrupts()
    # Typer's own Exit/Abort are Click's in older Typers and its own classes in newer ones.
    exits = (typer.Exit, getattr(cx, "Exit", typer.Exit))
    aborts = (typer.Abort, getattr(cx, "Abort", typer.Abort))
    command = typer.main.get_command(app)
    if not argv:  # bare `autodim`: the overview, as a usage error (exit 2)
        typer.echo(command.get_help(command.make_context("autodim", ["--help"],
                                                         resilient_parsing=True)))
        return 2
    try:
        rv = command.main(args=argv, prog_name="autodim", standalone_mode=False)
        if isinstance(rv, int) and rv == 130:  # Typer turns Ctrl-C into Exit(130)
            typer.echo("interrupted", err=True)
            return 130
    except exits as exc:
        return exc.exit_code
    except cx.NoArgsIsHelpError as exc:  # `autodim data`: that group's help
        typer.echo(exc.format_message())
        return 2
    except cx.UsageError as exc:
        if debug:
            raise
        typer.echo(_usage_line(exc, command, argv), err=True)
        return exc.exit_code
    except aborts as exc:
        if isinstance(exc.__cause__, EOFError):  # Click's wrapping of an EOFError
            if debug:
                raise exc.__cause__ from None
            typer.echo(_eof_line(exc.__cause__), err=True)
            return 2
        typer.echo("interrupted", err=True)
        return 130
    except cx.ClickException as exc:
        if debug:
            raise
        typer.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except SystemExit:
        task = sys.modules.get("autodim.task")
        if task is not None and task.interrupted_by_user():  # Lightning's sys.exit(1)
            typer.echo("interrupted", err=True)
            return 130
        raise
    except (AutodimError, OSError, EOFError, RecursionError, MemoryError) as exc:
        if debug:
            raise
        typer.echo(_error_line(exc), err=True)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
