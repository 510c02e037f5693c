"""The ``autodim`` command line.

Every command turns bad input into a one-line ``error: ...`` naming the file, field or
value at fault and exits with status 2 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from autodim.errors import AutodimError, ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Search per-field embedding dims under a memory budget and ship the "
                       "compact model.")
data_app = typer.Typer(no_args_is_help=True, help="Encode data sources and show schemas.")
app.add_typer(data_app, name="data")

_STATE: dict[str, Any] = {"debug": False, "quiet": False}


def echo(msg: str = "") -> None:
    if not _STATE["quiet"]:
        typer.echo(msg)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="Print results only.")):
    _STATE["debug"], _STATE["quiet"] = debug, quiet


# -- shared options ------------------------------------------------------------------------
DATA_HELP = ("Data source: 'synthetic' (built-in planted data; 'synthetic:tiny', "
             "'synthetic:criteo_kaggle'), a folder of RecBole atomic files, a Criteo TSV, "
             "or a CSV/Parquet file with --spec.")


def _data_options(rows: int | None, spec: Path | None, data_seed: int | None) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if rows is not None:
        opts["rows"] = rows
    if spec is not None:
        opts["spec"] = str(spec)
    if data_seed is not None:
        opts["seed"] = data_seed
    return opts


def load_source(source: str, rows: int | None = None, spec: Path | None = None,
                data_seed: int | None = None, refresh: bool = False):
    from autodim.data import load_data

    return load_data(source, refresh=refresh, **_data_options(rows, spec, data_seed))


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
    typer.echo(format_table(rows, ["field", "rows", "dim", "align", "compression", "bytes",
                                   "share"]))
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
    lr: float = typer.Option(3e-3, help="Learning rate."),
    patience: int = typer.Option(2, help="Early-stopping patience in epochs."),
    seed: int = typer.Option(0, help="Seed of initialisation and shuffling."),
    rows: Optional[int] = typer.Option(None, help="Rows to generate (synthetic data)."),
    spec: Optional[Path] = typer.Option(None, help="Field spec YAML for CSV/Parquet data."),
    progress: bool = typer.Option(False, help="Show Lightning's progress bar."),
    save_weights: Optional[Path] = typer.Option(None, help="Write the trained weights "
                                                "(safetensors) here."),
):
    """Train a compact model from a plan and print test AUC, logloss, bytes and compression.

    Examples:

      autodim train --data synthetic

      autodim train --data ~/.cache/autodim/ml-100k --plan mde --budget 10x

      autodim train --data clicks.csv --spec clicks.yaml --plan plan.json
    """
    from autodim.data.datamodule import CTRDataModule
    from autodim.task import TrainConfig, train_plan

    ds = load_source(data, rows, spec)
    p = _plan_from_arg(plan, ds.schema, dim, budget)
    dm = CTRDataModule(ds, batch_size=batch_size, seed=seed)
    cfg = TrainConfig(max_epochs=epochs, batch_size=batch_size, lr=lr, patience=patience,
                      seed=seed, progress=progress)
    echo(f"training {backbone} on {data}: {ds.schema.num_fields} fields, {len(ds.train):,} train "
         f"rows, plan {p.searcher.get('name')} ({p.num_bytes():,} B)")
    result = train_plan(p, dm, backbone=backbone, config=cfg)
    m = result.metrics
    typer.echo(f"test AUC {m['test_auc']:.4f}")
    typer.echo(f"test logloss {m['test_logloss']:.4f}")
    typer.echo(f"val AUC {m['val_auc']:.4f}")
    typer.echo(f"bytes {int(m['num_bytes']):,}")
    typer.echo(f"compression {m['compression']:.2f}x")
    if "bayes_auc" in ds.meta:
        typer.echo(f"bayes AUC {ds.meta['bayes_auc']:.4f}")
    if save_weights is not None:
        from autodim.export import save_weights as _save

        _save(result.task, save_weights)
        echo(f"weights written to {save_weights}")


@app.command()
def inspect(plan_path: Path = typer.Argument(..., help="A plan JSON.")):
    """Print a plan's per-field table (dim, rows, bytes, hashing, share) and compression.

    Example:

      autodim inspect runs/plan.json
    """
    from autodim.plan import DimensionPlan

    plan = DimensionPlan.load(plan_path)
    s = plan.searcher or {}
    echo(f"plan {plan_path}: searcher {s.get('name')}, D={plan.D}, seed {plan.seed}, budget "
         f"{plan.budget_bytes if plan.budget_bytes is not None else '-'} B")
    _print_plan(plan)
    if plan.metrics:
        typer.echo("metrics: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in plan.metrics.items()))


@data_app.command("prepare")
def data_prepare(
    source: str = typer.Argument(..., help=DATA_HELP),
    spec: Optional[Path] = typer.Option(None, help="Field spec YAML for CSV/Parquet."),
    rows: Optional[int] = typer.Option(None, help="Rows (synthetic data)."),
    refresh: bool = typer.Option(False, help="Re-encode even if a cache exists."),
):
    """Encode a source into the cache (ids as .npy, schema and encoders as JSON).

    Example:

      autodim data prepare ~/.cache/autodim/ml-100k
    """
    ds = load_source(source, rows, spec, refresh=refresh)
    _print_schema(ds)


@data_app.command("info")
def data_info(
    source: str = typer.Argument(..., help=DATA_HELP),
    spec: Optional[Path] = typer.Option(None, help="Field spec YAML for CSV/Parquet."),
    rows: Optional[int] = typer.Option(None, help="Rows (synthetic data)."),
):
    """Print a source's schema: fields, kinds, vocabulary sizes, split sizes.

    Example:

      autodim data info synthetic
    """
    _print_schema(load_source(source, rows, spec))


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


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the app, turning user errors into one line and exit code 2."""
    import click

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("AUTODIM_DEBUG") == "1"
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="autodim", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        return 130
    except AutodimError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        if debug:
            raise
        typer.echo(f"error: {exc.strerror}: {exc.filename}", err=True)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
