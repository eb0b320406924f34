"""The `birdplane` command line: parses flags, validates everything before work starts, prints.

Every bad input ends as one line on stderr and exit code 2, before any data is loaded, Ray is
started or an MLflow run is created. Everything else lives in the modules this one calls.

`train`, `predict` and `--help` run where only torch is installed: what imports Ray, Optuna or
MLflow (and the analysis and prediction modules, which load pandas, matplotlib or torchvision)
is imported inside the command that needs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from study import preflight
from study.capacity import (
    DEFAULT_DEPTHS,
    DEFAULT_EPOCHS,
    DEFAULT_POPULATION,
    DEFAULT_SEEDS,
    DEFAULT_WIDTHS,
    CapacityOptions,
    cost_estimate,
    cost_model_text,
    make_grid,
    prepare_capacity,
    run_capacity,
)
from study.capacity import (
    checkpoint_sizes as capacity_checkpoint_sizes,
)
from study.errors import StorageFull, UsageError
from study.manifest import experiment_path
from study.runner import NAME_PATTERN, SMOKE_SUBSET, StudyOptions, default_name, footprint_warning
from study.sweep import SweepOptions, prepare, prepare_extension, run_sweep
from study.sweep import checkpoint_sizes as sweep_checkpoint_sizes
from trainables.config import ConfigError, DataConfig, TrainConfig
from trainables.data import DataError, check_data, load_study_data
from trainables.loop import evaluate_untrained, fit
from trainables.losses import output_units


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors become one line, exit 2
        raise UsageError(message)


def add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-root",
        default=os.environ.get("BIRDPLANE_DATA", "./data"),
        help="image tree ROOT/{train,test}/<class>/, or a folder holding cifar-10-batches-py "
        "(default: $BIRDPLANE_DATA or ./data)",
    )
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10 into --data-root")
    p.add_argument("--classes", default="airplane,bird", help="comma-separated class names; labels follow this order")
    p.add_argument(
        "--val-split",
        default="holdout",
        choices=("holdout", "book"),
        help="holdout: stratified 10%% of train; book: the official test split, as the chapter does",
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/val split (separate from --seed)")
    p.add_argument(
        "--cache-dir", default="", help="decoded-tensor cache (default: $BIRDPLANE_CACHE or ~/.cache/birdplane)"
    )


def data_config(args: argparse.Namespace, subset: int = 0) -> DataConfig:
    return DataConfig(
        root=os.path.abspath(args.data_root),
        classes=args.classes,
        val_split=args.val_split,
        split_seed=args.split_seed,
        download=args.download,
        cache_dir=args.cache_dir,
        subset=subset,
    )


def add_config_flags(p: argparse.ArgumentParser, config=TrainConfig, groups: dict | None = None) -> None:
    """One flag per field of the config dataclass: its type, default, choices and help come from
    the field (validation stays the config's own, in one place). ``groups`` puts a field's flag
    in an argument group (e.g. a mutually exclusive one) instead of ``p``."""
    kinds = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        meta, default = f.metadata, f.default
        kind = kinds[f.name] if kinds[f.name] in (int, float) else str
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        text = meta.get("help", "")
        if "choices" in meta:
            text = f"one of {', '.join(meta['choices'])}" + (f"; {text}" if text else "")
        (groups or {}).get(f.name, p).add_argument(
            meta.get("flag", "--" + f.name.replace("_", "-")),
            dest=f.name,
            type=kind,
            default=default,
            help=(text + " " if text else "") + "(default: %(default)s)",
        )


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train one network (the chapter's recipe by default)")
    add_data_flags(p)
    seeds = p.add_mutually_exclusive_group()
    add_config_flags(p, groups={"seed": seeds})
    seeds.add_argument(
        "--seeds",
        default=None,
        metavar="S1,S2,...",
        help="train these seeds as one population (one batched step, each still its own run); one summary per seed",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object with the summary on stdout (one per seed)"
    )
    p.set_defaults(handler=cmd_train)


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0,1,2,3' -> (0, 1, 2, 3); empty items, non-integers, negatives and duplicates are refused."""
    seeds = []
    for item in text.split(","):
        token = item.strip()
        if not token.isdigit():
            raise UsageError(f"--seeds {text!r}: {token!r} is not a seed (comma-separated integers >= 0)")
        if int(token) in seeds:
            raise UsageError(f"--seeds {text!r}: seed {int(token)} is given twice")
        seeds.append(int(token))
    return tuple(seeds)


def json_safe(value):
    """NaN and infinities are not JSON: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def format_epoch(m: dict) -> str:
    return (
        f"epoch {m['epoch']:>3}  train_loss {m['train_loss']:.4f}  train_acc {m['train_acc']:.4f}  "
        f"val_loss {m['val_loss']:.4f}  val_acc {m['val_acc']:.4f}  gap {m['gap']:+.4f}  "
        f"{m['samples_per_second']:,.0f} samples/s"
    )


def cmd_train(args: argparse.Namespace) -> int:
    config, dcfg = train_config(args), data_config(args)
    configs = [config] if args.seeds is None else [config.replace(seed=s) for s in parse_seeds(args.seeds)]
    check_data(dcfg)
    output_units(config.loss, len(dcfg.classes))
    data = load_study_data(dcfg)
    if config.epochs == 0:
        for c in configs:
            untrained(c, data, args.json, prefix=_seed_prefix(args, c))
        return 0
    out = sys.stderr if args.json else sys.stdout
    if args.seeds is None:
        results = [fit(config, data, on_epoch_end=lambda m, _: print(format_epoch(m), file=out, flush=True))]
    else:
        from trainables.population import fit_population

        def progress(metrics: dict, _) -> None:
            for i, m in metrics.items():
                print(f"seed {configs[i].seed}  {format_epoch(m)}", file=out, flush=True)

        results = fit_population(configs, data, on_epoch_end=progress)
    for c, result in zip(configs, results, strict=True):
        summary = result.summary()
        if args.json:
            print(json.dumps(json_safe({**summary, "config": c.to_dict(), "data": data.summary()})))
        else:
            print(
                f"{_seed_prefix(args, c)}{summary['status']}: {summary['epochs']} epochs in {summary['seconds']:.1f}s, "
                f"param_count {summary['param_count']:,}, val_acc {summary['val_acc']:.4f} "
                f"(best {summary['best_val_acc']:.4f} at epoch {summary['best_epoch']}), "
                f"train_acc {summary['train_acc']:.4f}; steps {summary['steps']}"
            )
    return 0


def _seed_prefix(args: argparse.Namespace, config: TrainConfig) -> str:
    return "" if args.seeds is None else f"seed {config.seed}: "


def untrained(config, data, as_json: bool, prefix: str = "") -> int:
    """--epochs 0: the seeded, untrained net's size and its accuracy by chance (nothing is trained)."""
    summary = {**evaluate_untrained(config, data), "epochs": 0, "status": "untrained"}
    if as_json:
        print(json.dumps(json_safe({**summary, "config": config.to_dict(), "data": data.summary()})))
    else:
        print(
            f"{prefix}untrained: param_count {summary['param_count']:,}, val_loss {summary['val_loss']:.4f}, "
            f"val_acc {summary['val_acc']:.4f}, train_acc {summary['train_acc']:.4f}"
        )
    return 0


def add_study_flags(p: argparse.ArgumentParser, kind: str, seed_help: str, smoke_help: str) -> None:
    """The flags of StudyOptions, shared by every kind of study, and --check, --json, the data flags."""
    d = StudyOptions()
    p.add_argument("--seed", type=int, default=d.seed, help=seed_help)
    p.add_argument("--cpus-per-trial", type=int, default=d.cpus_per_trial)
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        help="default 1/16 (16 trials a GPU) when the cluster has GPUs, else 0",
    )
    p.add_argument("--max-concurrent", type=int, default=None, help="default: as many as the resources hold")
    p.add_argument("--address", default=None, help="Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: local)")
    p.add_argument(
        "--storage-path",
        default=None,
        help="Tune results and checkpoints (default ~/ray_results); shared storage or a cloud URI on a cluster",
    )
    p.add_argument("--name", default=None, help=f"study name (default {kind}-<timestamp>); --resume needs it")
    p.add_argument("--resume", action="store_true", help="continue the interrupted study --name")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=d.checkpoint_every,
        metavar="N",
        help=f"a trial's checkpoint every N epochs, at its first and its last (default {d.checkpoint_every}); "
        "a resumed or retried trial repeats at most N-1 epochs",
    )
    p.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: MLflow's local sqlite:///mlflow.db)"
    )
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: the study name)")
    p.add_argument("--smoke", action="store_true", help=smoke_help)
    p.add_argument(
        "--check",
        action="store_true",
        help="validate every flag, the input files, the data root and the tracking URI, print the plan, "
        "and stop (nothing is started or written)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    add_data_flags(p)


def study_options(args: argparse.Namespace, kind: str) -> dict:
    """The StudyOptions fields from the shared flags (a default name when --name is not given)."""
    if args.resume and not args.name:
        raise UsageError("--resume needs --name of the study to continue")
    flags = {f.name for f in dataclasses.fields(StudyOptions)} - {"name", "max_failures"}  # add_study_flags' flags
    return {**{name: getattr(args, name) for name in flags}, "name": args.name or default_name(kind)}


def _sweep_parser(sub) -> None:
    d = SweepOptions()
    p = sub.add_parser("sweep", help="run a study: Optuna TPE + ASHA on Ray Tune, every trial in MLflow")
    p.add_argument("--space", default=None, help="search-space YAML (default: the one shipped in study/spaces/)")
    p.add_argument("--num-samples", type=int, default=None, help=f"trials (default {d.num_samples}; 4 with --smoke)")
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs per trial (overrides the space's epochs; 2 with --smoke)"
    )
    p.add_argument("--metric", default=d.metric, help="val_acc (max) or val_loss (min)")
    p.add_argument("--objectives", default="", help="val_acc,param_count for a multi-objective search")
    p.add_argument("--scheduler", default=d.scheduler, help="asha or none")
    p.add_argument("--search", default=d.search, help="tpe (Optuna, default) or random (Ray's random search)")
    p.add_argument(
        "--sampler", default=d.sampler, help="the Optuna sampler of --search tpe: tpe (default), gp, qmc or random"
    )
    p.add_argument(
        "--grace-epochs",
        type=int,
        default=None,
        help="ASHA's minimum epochs per trial (default 4, or the trials' epochs when fewer)",
    )
    p.add_argument(
        "--reduction-factor",
        type=float,
        default=d.reduction_factor,
        help=f"ASHA keeps the top 1/RF of each rung's trials (rungs at grace*RF^k; default {d.reduction_factor:g})",
    )
    p.add_argument(
        "--extend",
        type=int,
        default=None,
        metavar="N",
        help="N more trials for the finished sweep --name: its Optuna study warm-starts the search, its "
        "MLflow parent run gets them; --space may widen numeric ranges",
    )
    p.add_argument(
        "--reproducible",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the same flags, seed and data give the same trials and metrics: the searcher sees whole "
        "batches in trial order, ASHA decides against earlier batches (default: on for a local Ray, off "
        "with --address)",
    )
    p.add_argument(
        "--seeds-per-trial",
        type=int,
        default=None,
        metavar="K",
        help="train each trial's recipe with K seeds as one population and score it by their mean val_acc "
        "(reported to Optuna and ASHA with its sd): the search ranks recipes, not lucky seeds; each seed is "
        "an MLflow run nested under its trial's (default 1; --extend keeps the sweep's)",
    )
    p.add_argument(
        "--optuna-storage",
        default=None,
        help="the Optuna study's database (study name = --name); default: optuna.db beside the MLflow "
        "store; 'none' keeps it in memory. Watch it live with `optuna-dashboard URL`",
    )
    add_study_flags(
        p,
        "sweep",
        seed_help="seed of the search (the trials' training seeds start at 100000*SEED)",
        smoke_help="a tiny sweep: 4 trials, 2 epochs, 100 images per class",
    )
    p.set_defaults(handler=cmd_sweep)


def sweep_options(args: argparse.Namespace) -> SweepOptions:
    num_samples = args.num_samples if args.num_samples is not None else (4 if args.smoke else SweepOptions.num_samples)
    objectives = tuple(o.strip() for o in args.objectives.split(",") if o.strip())
    return SweepOptions(
        **study_options(args, "sweep"),
        space=args.space,
        num_samples=num_samples,
        epochs=args.epochs,
        metric=args.metric,
        objectives=objectives,
        scheduler=args.scheduler,
        grace_epochs=args.grace_epochs if not args.smoke else 1,
        reduction_factor=args.reduction_factor,
        search=args.search,
        optuna_storage=args.optuna_storage,
        sampler=args.sampler,
        reproducible=args.reproducible,
        seeds_per_trial=args.seeds_per_trial,
    )


def run_and_summarise(args: argparse.Namespace, run) -> tuple:
    """Run a study; (its summary, the exit code: 130 when interrupted, 1 when every trial failed).
    With --json, print the summary as one JSON object (and what went wrong on stderr)."""
    quiet_libraries()
    summary = run()
    if args.json:
        print(json.dumps(json_safe(asdict(summary)), default=str))
        for line in trouble_lines(summary):  # stdout holds the JSON object alone
            print(line, file=sys.stderr)
    return summary, exit_code(summary)


def exit_code(summary) -> int:
    """130 when the study was interrupted, 1 when it has trials and every one failed, else 0."""
    if summary.interrupted:
        return 130
    failed = [t for t in summary.trials if t.get("error")]
    return 1 if summary.trials and len(failed) == len(summary.trials) else 0


def sync_command(summary) -> str:
    """The `birdplane sync` that replays this study into MLflow (its storage path, as it ran)."""
    import shlex

    storage = summary.experiment_path[: -len(summary.name)].rstrip("/" + os.sep) or "/"
    return f"birdplane sync --name {shlex.quote(summary.name)} --storage-path {shlex.quote(storage)}"


def trouble_lines(summary) -> list[str]:
    """What the user must know after a study ran: its failed trials and MLflow calls not delivered."""
    lines = []
    failed = [t for t in summary.trials if t.get("error")]
    if failed:
        none_left = " (none succeeded)" if len(failed) == len(summary.trials) else ""
        lines.append(
            f"failed: {len(failed)} of {len(summary.trials)} trials failed{none_left}; "
            f"first error: {failed[0]['error']}"
        )
    if summary.undelivered:
        lines.append(
            f"warning: {summary.undelivered} MLflow calls were not delivered (the tracking server did not answer); "
            f"Ray's results hold everything: repair MLflow with `{sync_command(summary)}`"
        )
    return lines


def warn_footprint(prep, sizes: list[int]) -> None:
    """--check: a warning on stderr when the study's checkpoints may not fit on its storage path."""
    warning = footprint_warning(prep.storage_path, sizes)
    if warning:
        print(warning, file=sys.stderr)


def format_trial(t: dict) -> str:
    from analysis.report import config_label

    return (
        f"val_acc {t['val_acc']:.4f}  train_acc {t['train_acc']:.4f}  param_count {t['param_count']:>10,}  "
        f"epochs {t['epochs']}  {config_label(t.get('config') or {})}"
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    opts = sweep_options(args)
    if args.extend is not None:
        if not args.name:
            raise UsageError("--extend needs --name of the sweep to extend")
        if args.num_samples is not None:
            raise UsageError("--extend N gives the number of new trials: drop --num-samples")
        prep = prepare_extension(opts, None, args.extend)  # the sweep's own data, space and search flags
        opts = prep.options
    else:
        prep = prepare(opts, data_config(args, subset=SMOKE_SUBSET if args.smoke else 0))
    if args.check:
        plan = {
            "name": opts.name,
            "experiment": prep.experiment,
            "tracking_uri": prep.tracking_uri,
            "experiment_path": prep.path,
            "epochs": prep.epochs,
            "num_samples": opts.num_samples,
            "space": prep.space.to_dict(),
            "data": prep.data.to_dict(),
        }
        print(
            json.dumps(json_safe(plan))
            if args.json
            else f"ok: sweep {opts.name!r}, {opts.num_samples} trials of up to {prep.epochs} epochs, "
            f"results in {prep.path}, MLflow {prep.tracking_uri}"
        )
        warn_footprint(prep, sweep_checkpoint_sizes(prep))
        return 0
    summary, code = run_and_summarise(args, lambda: run_sweep(prep))
    if args.json:
        return code
    print(f"\nsweep {summary.name}: {len(summary.trials)} trials; results in {summary.experiment_path}")
    if summary.interrupted:
        print(f"interrupted: continue with `birdplane sweep --name {summary.name} --resume` (and the same flags)")
    print(f"MLflow: experiment {summary.experiment!r}, parent run {summary.parent_run_id} at {summary.tracking_uri}")
    if summary.best:
        b = summary.best
        print(f"best trial {b['trial_id']}: {format_trial(b)}")
        print(f"  results: {b['path']}\n  MLflow run: {b['run_id']}")
    if opts.objectives:
        print("Pareto set (val_acc up, param_count down):")
        for t in summary.pareto:
            print(f"  {t['trial_id']}: {format_trial(t)}")
    for line in trouble_lines(summary):
        print(line)
    print(review_hint(summary.tracking_uri, summary.experiment))
    return code


def review_hint(uri: str, experiment: str) -> str:
    """Where to look: the experiment's runs in MLflow's UI, opened in its "Model training" view
    (MLflow 3.17 opens experiments on its GenAI pages unless the URL says workflowType)."""
    from mlflow import MlflowClient

    try:
        exp = MlflowClient(uri).get_experiment_by_name(experiment)
    except Exception:  # the store went away at the end: the hint is not worth a traceback
        exp = None
    page = f"#/experiments/{exp.experiment_id}?workflowType=machine_learning" if exp is not None else ""
    if preflight.is_local_store(uri):
        return (
            f"review: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000, then open "
            f"http://127.0.0.1:5000/{page}"
        )
    return f"review: open {uri.rstrip('/')}/{page}"


def _report_parser(sub) -> None:
    p = sub.add_parser("report", help="figures + HTML of a study: accuracy against parameters, overfitting")
    p.add_argument(
        "--experiment",
        required=True,
        action="append",
        help="MLflow experiment of the study (the study name by default); give it twice or more to "
        "compare studies on one page (compare.html)",
    )
    p.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: MLflow's local sqlite:///mlflow.db)"
    )
    p.add_argument("--out", default="report", help="folder for the PNG figures and report.html (default ./report)")
    p.add_argument(
        "--include-short",
        action="store_true",
        help="also analyse trials that ran fewer epochs than the budget (left out by default)",
    )
    p.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.capacity import readable
    from analysis.report import TABLE_FILE, config_label, memorisation_text, power_line, threshold_text, trend_lines
    from analysis.tuning import shift_text
    from study.reporting import build_report

    quiet_libraries()
    if len(args.experiment) > 1:
        return compare_studies(args)
    args.experiment = args.experiment[0]
    report, paths, uri = build_report(args.tracking_uri, args.experiment, Path(args.out), args.include_short)
    budget = f"the {report.epochs}-epoch budget" if report.epochs else "an unknown budget"
    if args.include_short:
        budget = f"any budget (--include-short; the study's is {report.epochs} epochs)"
    tuned = (
        f" at the chosen values of {int(report.tuning['seeds'].sum())} trained (val's reporting half)"
        if report.tuning is not None
        else ""
    )
    print(
        f"study {args.experiment}: {len(report.trials)} trials{tuned} at {budget} ({report.left_out_text()}), "
        f"best val_acc {report.trials['val_acc'].max():.4f}"
    )
    columns = [
        "group",
        "depth",
        "hidden_sizes",
        "param_count",
        "seeds",
        "final_val_acc",
        "final_val_acc_sd",
        "train_acc",
        "gap",
        "val_loss_rise",
        "onset",
    ]
    print(
        "\nper size (means over seeds; final_val_acc_sd their sd; val_loss_rise = final - minimum val loss; "
        "onset = median val-loss onset epoch of the seeds that show one):"
    )
    if report.tuning is not None:
        print("(a tuned study: each size at its chosen value, numbers from val's reporting half)")
    print(readable(report.sizes[columns]).to_string(index=False))
    print(threshold_text(report))
    print(power_line(report))
    if report.tuning is not None:
        for line in shift_text(report.tuning):
            print(line)
    for group, m in report.memorisation.items():
        print(memorisation_text(group, m))
    for line in trend_lines(report):
        print(line)
    if report.confirmations is not None:
        print("\nconfirmed at the full budget (means over seeds):")
        print(
            readable(
                report.confirmations[
                    [
                        "param_count",
                        "hidden_sizes",
                        "seeds",
                        "epochs",
                        "sweep_val_acc",
                        "sweep_epochs",
                        "best_val_acc",
                        "best_val_acc_sd",
                        "val_acc",
                        "on_confirmed_frontier",
                    ]
                ]
            ).to_string(index=False)
        )
    print("\nPareto set (val_acc up, param_count down):")
    print(f"  {'param_count':>12} {'val_acc':>8} {'train_acc':>9} {'gap':>7}  config")
    for _, r in report.pareto.iterrows():
        print(
            f"  {int(r['param_count']):>12,} {r['val_acc']:>8.3f} {r['train_acc']:>9.3f} {r['gap']:>+7.3f}  "
            f"{config_label(r)}"
        )
    flagged = report.edges[report.edges["at_edge"]] if not report.edges.empty else report.edges
    for r in flagged.itertuples():
        print(f"edge: the best trials' {r.dimension} sits at the {r.edge} edge of {r.low}..{r.high}; widen the range")
    print(
        f"\nwrote {len(paths)} files to {args.out}/ ({TABLE_FILE} holds the per-size table; also logged to the "
        f"parent run under report/)"
    )
    print(review_hint(uri, args.experiment))
    return 0


def compare_studies(args: argparse.Namespace) -> int:
    from analysis.capacity import readable
    from analysis.compare import BEST_FILE, TRENDS_FILE, best_table, trends_table
    from study.reporting import build_comparison

    reports, paths, _ = build_comparison(args.tracking_uri, args.experiment, Path(args.out), args.include_short)
    table = best_table(reports)
    print("studies compared (best trial at each study's budget):")
    print(
        readable(table[["experiment", "trials", "epochs", "best_val_acc", "best_gap", "best_param_count"]]).to_string(
            index=False
        )
    )
    trends = trends_table(reports)
    print("\ntrends per curve (shape; slope per decade with its 95% t interval over size means where monotone):")
    print(readable(trends[trends["metric"] == "gap"].drop(columns=["metric"])).to_string(index=False))
    print(f"\nwrote {len(paths)} files to {args.out}/ (compare.html; {BEST_FILE} and {TRENDS_FILE} hold the tables)")
    return 0


def _export_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="a study as tidy tables: one row per trial (FILE) and per trial-epoch (FILE.curves)"
    )
    p.add_argument("--experiment", required=True, help="MLflow experiment of the study")
    p.add_argument("--out", required=True, help="FILE.csv or FILE.parquet; the curves go to FILE.curves.csv|.parquet")
    p.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: MLflow's local sqlite:///mlflow.db)"
    )
    p.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient

    from analysis.export import FORMATS, curves_path, study_tables, write_tables
    from analysis.runs import StudyNotFound
    from study.outputs import check_out_files, write_error

    out = Path(args.out)
    if out.suffix not in FORMATS:
        raise UsageError(f"--out {args.out}: unknown format {out.suffix or '(none)'!r}; use .csv or .parquet")
    check_out_files([out, curves_path(out)])
    quiet_libraries()
    uri = preflight.resolve_tracking_uri(args.tracking_uri)
    preflight.check_tracking_uri(uri)
    preflight.check_store_exists(uri)
    try:
        trials, curves = study_tables(MlflowClient(uri), args.experiment)
    except StudyNotFound as err:
        raise UsageError(str(err)) from None
    try:
        write_tables(trials, curves, out)
    except OSError as err:
        raise write_error("--out", out, err) from None
    print(f"wrote {len(trials)} trials to {out} and {len(curves)} trial-epochs to {curves_path(out)}")
    return 0


def _rerun_parser(sub) -> None:
    p = sub.add_parser("rerun", help="retrain a study's best trial with several seeds; report test accuracy")
    p.add_argument("--experiment", required=True)
    p.add_argument("--rank", type=int, default=1, help="1 = the best trial")
    p.add_argument(
        "--pareto",
        action="store_true",
        help="confirm the study's Pareto set instead: retrain each at the full budget with --seeds seeds, "
        "as child runs of the study (validation only)",
    )
    p.add_argument("--top", type=int, default=None, help="confirm the top K trials by val_acc the same way")
    p.add_argument("--metric", default="val_acc", help="val_acc (max) or val_loss (min)")
    p.add_argument("--seeds", type=int, default=3, help="how many seeds; the trial's own seed first")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="default: as many epochs as the trial ran (with --pareto/--top: the study's full budget)",
    )
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--address", default=None, help="Ray cluster to run the seeds on (default: local)")
    p.add_argument("--data-root", default=None, help="override the data root recorded with the study")
    p.add_argument(
        "--register",
        default=None,
        metavar="NAME",
        help="register the rerun's model (its first seed's best-epoch weights) in MLflow's model registry "
        "as a new version of NAME and point the alias @champion at it",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_rerun)


def cmd_rerun(args: argparse.Namespace) -> int:
    from analysis.aggregate import mean_sd_text
    from study.rerun import RerunOptions, run_rerun

    quiet_libraries()
    if args.pareto or args.top is not None:
        if args.register is not None:
            raise UsageError("--register goes with a rerun of one trial, not with --pareto or --top")
        return confirm(args)
    summary = run_rerun(
        RerunOptions(
            experiment=args.experiment,
            rank=args.rank,
            metric=args.metric,
            seeds=args.seeds,
            epochs=args.epochs,
            tracking_uri=args.tracking_uri,
            address=args.address,
            data_root=args.data_root,
            register=args.register,
        )
    )
    if args.json:
        print(json.dumps(json_safe(asdict(summary))))
        return 0
    print(
        f"trial {summary.trial_id} (run {summary.trial_run_id}): {args.metric} {summary.trial_metric:.4f} in the sweep"
    )
    runs = summary.runs
    print(
        f"reruns, seeds {', '.join(map(str, summary.seeds))}: best val_acc "
        f"{mean_sd_text([r['best_val_acc'] for r in runs])} (epochs {', '.join(str(r['best_epoch']) for r in runs)} "
        f"of {runs[0]['last_epoch']}), test_acc {mean_sd_text([r['test_acc'] for r in runs])} with those "
        f"best-epoch weights (last epoch's: {mean_sd_text([r['test_acc_last'] for r in runs])})"
    )
    print(like_for_like_text(summary.like_for_like))
    if summary.reproduced is not None:
        print(f"same-seed rerun reproduced the trial exactly: {'yes' if summary.reproduced else 'NO'}")
    print(f"MLflow: parent run {summary.parent_run_id}; model: {summary.model_uri}")
    model = summary.model_uri
    if summary.registered:
        r = summary.registered
        print(f"registered: {r['name']} version {r['version']} ({r['uri']}), alias {r['alias_uri']}")
        model = r["alias_uri"]
    print(f"use it: birdplane predict --model {model} IMAGE_OR_DIR...")
    return 0


def like_for_like_text(rows: list[dict]) -> str:
    """One line: the selected trial against its independent retrainings, final with final, best with best."""

    def number(value) -> str:
        return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    parts = []
    for r in rows:
        interval = f" ({number(r['low'])}..{number(r['high'])})" if r["independent_seeds"] > 1 else ""
        luck = "" if r["luck"] is None or math.isnan(r["luck"]) else f", luck {r['luck']:+.3f}"
        parts.append(
            f"{r['metric']} val_acc: trial {number(r['sweep'])}, its own seed {number(r['own_seed'])}, "
            f"{r['independent_seeds']} independent seeds {number(r['independent_mean'])}{interval}{luck}"
        )
    return "like for like (final = mean of the last 5 epochs; best = the best epoch, selected on val): " + "; ".join(
        parts
    )


def confirm(args: argparse.Namespace) -> int:
    from study.rerun import ConfirmOptions, run_confirm

    summary = run_confirm(
        ConfirmOptions(
            experiment=args.experiment,
            pareto=args.pareto,
            top=args.top,
            seeds=args.seeds,
            epochs=args.epochs,
            tracking_uri=args.tracking_uri,
            address=args.address,
            data_root=args.data_root,
        )
    )
    if args.json:
        print(json.dumps(json_safe(asdict(summary))))
        return 0
    print(
        f"confirmed {len(summary.trials)} trials at {summary.epochs} epochs x {summary.seeds} seeds "
        f"(child runs of {summary.parent_run_id}, tagged confirms=<trial run>):"
    )
    print(f"  {'trial':<10} {'params':>11} {'sweep val_acc (epochs)':>24} {'best val_acc':>15} {'final val_acc':>15}")
    for t in summary.trials:
        print(
            f"  {t['trial_id']:<10} {t['param_count']:>11,} {t['sweep_val_acc']:>16.3f} ({t['sweep_epochs']:>3}) "
            f"{t['best_val_acc_mean']:>8.3f} ± {t['best_val_acc_sd']:.3f} "
            f"{t['val_acc_mean']:>8.3f} ± {t['val_acc_sd']:.3f}"
        )
        print(f"    {like_for_like_text(t['like_for_like'])}")
    print(f"see them beside the sweep: birdplane report --experiment {args.experiment}")
    return 0


def _predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="classify images with a saved model (a path or an MLflow runs:/ URI)")
    p.add_argument(
        "--model",
        required=True,
        help="model.pt path, runs:/RUN_ID/model.pt, or a registered model: models:/NAME/VERSION, models:/NAME@champion",
    )
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--tracking-uri", default=None, help="for runs:/ URIs (default: MLflow's local store)")
    p.add_argument(
        "--weights",
        default="best",
        choices=("best", "last"),
        help="the best-val epoch's weights (default) or the last epoch's",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from study.predict import expand, load_model, predict

    bundle = load_model(args.model, args.tracking_uri, args.weights)
    results = predict(bundle, expand(args.images))
    if args.json:
        print(json.dumps([asdict(r) for r in results]))
    else:
        for r in results:
            print(f"{r.path}\terror: {r.error}" if r.error else f"{r.path}\t{r.label}\t{r.probability:.4f}")
    return 1 if any(r.error for r in results) else 0


def _sync_parser(sub) -> None:
    p = sub.add_parser(
        "sync", help="replay a study's Ray results into MLflow (after an outage); adds only what is missing"
    )
    p.add_argument("--name", required=True, help="the study's name")
    p.add_argument("--storage-path", default=None, help="as given to the study (default ~/ray_results)")
    p.add_argument("--tracking-uri", default=None, help="default: the URI the study used")
    p.set_defaults(handler=cmd_sync)


def cmd_sync(args: argparse.Namespace) -> int:
    from study.sync import sync_study

    if not NAME_PATTERN.match(args.name):
        raise UsageError(f"--name {args.name!r}: use letters, digits, '_', '-', '.'")
    quiet_libraries()
    counts = sync_study(experiment_path(args.storage_path, args.name), args.tracking_uri)
    print(
        f"synced {counts['trials']} trials to {counts['tracking_uri']}: {counts['runs_closed']} runs completed, "
        f"{counts['open']} trials unfinished (resume the study to finish them); parent run {counts['parent_run_id']}"
    )
    for run_id, trial_id, status in counts["retired"]:
        print(f"retired run {run_id} (trial {trial_id}, {status}, unknown to Ray's saved state): soft-deleted")
    for run_id, trial_id, _ in counts["kept"]:
        print(
            f"kept run {run_id} (trial {trial_id}, finished, unknown to Ray's saved state): "
            "not deleted, tagged birdplane.role=orphan, out of the study"
        )
    return 0


def _capacity_parser(sub) -> None:
    p = sub.add_parser(
        "capacity",
        help="a controlled capacity study: widths x depths x seeds, one fixed recipe, "
        "equal budgets, on Ray Tune, every run in MLflow",
    )
    p.add_argument("--widths", default=None, help=f"hidden widths (default {','.join(map(str, DEFAULT_WIDTHS))})")
    p.add_argument("--depths", default=None, help=f"hidden layers (default {','.join(map(str, DEFAULT_DEPTHS))})")
    p.add_argument("--seeds", type=int, default=None, help=f"seeds per cell (default {DEFAULT_SEEDS})")
    p.add_argument(
        "--epochs", type=int, default=None, help=f"epochs of every cell, no early stopping (default {DEFAULT_EPOCHS})"
    )
    p.add_argument(
        "--regulariser",
        default=None,
        help="a second axis: FIELD=V1,V2,... e.g. augment=none,crop+flip or weight_decay=0,5e-4; "
        "one capacity curve per value",
    )
    p.add_argument(
        "--tune",
        default=None,
        help="a nuisance hyperparameter tuned per size: FIELD=V1,V2,... e.g. lr=0.003,0.01,0.03; every cell "
        "trains each value, the best on val's selection half is kept per size and reported on the other half",
    )
    p.add_argument(
        "--label-noise",
        type=float,
        default=None,
        help="share P in [0, 0.5) of the training labels flipped, the same labels for every run (val and test "
        "stay clean); for one curve per share use --regulariser label_noise=0,0.1,0.2",
    )
    p.add_argument(
        "--large",
        action="store_true",
        help="allow a design of more than 1,000 runs (a GPU or a cluster: --check prints its cost)",
    )
    p.add_argument(
        "--design",
        default=None,
        help="design YAML: widths, depths, seeds, epochs, regulariser, tune (flags override it)",
    )
    p.add_argument(
        "--recipe",
        default="chapter",
        help="everything but size: chapter (default), or a recipe YAML of TrainConfig fields",
    )
    p.add_argument("--from-run", default=None, help="take the recipe from a trial's run (its non-size hyperparameters)")
    p.add_argument(
        "--population",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train each cell's seeds (and regulariser and tuned values that share its shape) as one population: "
        "one Ray trial, one batched step, each member still its own MLflow run (default: "
        f"{'on' if DEFAULT_POPULATION else 'off'}; a --resume keeps the study's own)",
    )
    add_study_flags(
        p,
        "capacity",
        seed_help="the first seed (cells use seed, seed+1, ...)",
        smoke_help="a tiny study: widths 16,32, depth 1, 2 seeds, 2 epochs, 100 images per class",
    )
    p.set_defaults(handler=cmd_capacity)


def cmd_capacity(args: argparse.Namespace) -> int:
    from analysis.aggregate import capacity_table  # imports MLflow (through analysis.record)

    study = study_options(args, "capacity")
    grid = make_grid(
        args.widths, args.depths, args.seeds, args.epochs, args.regulariser, args.design, args.smoke, args.tune
    )
    opts = CapacityOptions(
        **study,
        design=grid,
        recipe=args.recipe,
        from_run=args.from_run,
        label_noise=args.label_noise,
        large=args.large,
        population=args.population,
    )
    dcfg = data_config(args, subset=SMOKE_SUBSET if args.smoke else 0)
    prep = prepare_capacity(opts, dcfg)
    if args.check:
        cost = cost_estimate(grid, dcfg, prep.space.recipe.get("batch_size", 64))
        plan = {
            "name": opts.name,
            "design": grid.to_dict(),
            "runs": grid.runs(),
            "cost": cost,
            "recipe": prep.space.recipe,
            "recipe_source": prep.space.recipe_source,
            "population": prep.options.population,
            "experiment_path": prep.path,
            "tracking_uri": prep.tracking_uri,
        }
        print(
            json.dumps(json_safe(plan))
            if args.json
            else f"ok: capacity study {opts.name!r}: {grid.label()} = {grid.runs()} runs, recipe "
            f"{prep.space.recipe_source}; results in {prep.path}, MLflow {prep.tracking_uri}\n"
            f"estimated cost: {cost['cpu_hours']:,.1f} CPU-hours here ({cost['wall_hours_here']:,.1f} h of wall "
            f"time on 2 CPUs), {cost['gpu_hours']:,.2f} GPU-hours on an H100 ({cost_model_text()})"
        )
        warn_footprint(prep, capacity_checkpoint_sizes(prep))
        return 0
    summary, code = run_and_summarise(args, lambda: run_capacity(prep))
    if args.json:
        return code
    print(
        f"\ncapacity study {summary.name}: {grid.label()}; {len(summary.trials)} runs; results in "
        f"{summary.experiment_path}"
    )
    if summary.interrupted:
        print(f"interrupted: continue with `birdplane capacity --name {summary.name} --resume` (and the same flags)")
    print(capacity_table(summary.trials))
    print(f"MLflow: experiment {summary.experiment!r}, parent run {summary.parent_run_id} at {summary.tracking_uri}")
    print(
        f"analyse: birdplane report --experiment {summary.experiment}"
        + (f" --tracking-uri {summary.tracking_uri}" if not preflight.is_local_store(summary.tracking_uri) else "")
    )
    for line in trouble_lines(summary):
        print(line)
    return code


COMMANDS: list[Callable] = [
    _train_parser,
    _sweep_parser,
    _capacity_parser,
    _report_parser,
    _export_parser,
    _rerun_parser,
    _predict_parser,
    _sync_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="birdplane", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def quiet_libraries() -> None:
    """Progress bars and INFO lines of the libraries would bury our own output.

    Called by the commands that use Optuna/MLflow only: `train`, `predict` and `--help` import
    neither Ray, Optuna nor MLflow, so they run where only torch is installed.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow prints "View run ... at URL" to stdout whenever a run ends: that would break --json.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except (UsageError, ConfigError, DataError) as err:
        print(f"birdplane: error: {err}", file=sys.stderr)
        return 2
    except StorageFull as err:
        print(f"birdplane: error: {err}", file=sys.stderr)
        return StorageFull.exit_code
    except KeyboardInterrupt:
        print("birdplane: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
