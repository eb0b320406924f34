"""A study's report: figures as PNG files, a CSV of the per-size table and one self-contained HTML
page (figures inlined).

Budgets are never mixed silently: trials that ran fewer epochs than the study's budget (stopped
early by ASHA, diverged) are drawn apart and left out of the frontier, the trends and the per-size
table, and the report says how many and why (unless ``include_short``).
"""

from __future__ import annotations

import base64
import html
import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from analysis import figures
from analysis.capacity import (
    SIZE_TABLE_LEGEND,
    comparisons,
    curve_trend,
    curves,
    epochs_of,
    memorisation,
    per_size,
    readable,
    size_label,
    split_by_epochs,
)
from analysis.epochwise import epoch_grids, heatmap_figure
from analysis.overfitting import compare_by, edge_flags, importances, overfitting_summary, pareto_front
from analysis.power import power_text, study_power
from analysis.statistics import confirmation
from analysis.tuning import CHOICE_LEGEND, choose, on_reporting_half, shift_text, tuned_field, tuning_figure
from trainables.files import atomic_paths

FIGURE_FILES = ("capacity.png", "gap.png", "learning_curves.png", "hyperparameters.png", "importance.png")
# and, for a capacity study, epochwise.png; for a tuned one, tuning.png
TABLE_FILE = "capacity_table.csv"
LEFT_OUT_COLUMNS = ["run_id", "trial_id", "reason"]
TREND_METRICS = {
    "final_val_acc": "final val_acc",
    "gap": "the final train-val gap",
    "val_loss_rise": "final minus minimum val loss",
}
COMPARISONS_LEGEND = (
    "per curve: final val_acc of each size against the next smaller one (adjacent) and the best size against each "
    "other (vs best); diff = a - b with its 95% Welch interval over seeds; p_holm: Holm-adjusted over the curve's "
    "comparisons. Every size is scored on the same validation split: the split's own noise is not in these tests"
)


@dataclass
class StudyReport:
    """Everything the report shows, computed once; the CLI prints parts of it, files hold all."""

    experiment: str
    trials: pd.DataFrame  # the trials the analysis uses: finished, at the full budget
    pareto: pd.DataFrame
    overfitting: pd.DataFrame
    by_loss: pd.DataFrame
    by_depth: pd.DataFrame
    by_batch: pd.DataFrame
    edges: pd.DataFrame
    importances: dict
    # Per curve (one group and depth: never pooled), per metric: analysis.capacity.curve_trend (shape, and the
    # size-level slope with its t interval where the curve is monotone).
    trends: dict
    comparisons: pd.DataFrame  # per curve: final val_acc of adjacent sizes and of each size against the best, Holm
    sizes: pd.DataFrame  # per size (and group): means, spreads and 95% intervals over seeds
    group: str | None  # what separates the curves: the regulariser, the loss, or nothing
    memorisation: dict  # per group: analysis.capacity.memorisation
    epochs: int | None  # the study's epoch budget (None: not fixed)
    short: pd.DataFrame  # finished trials below the budget, drawn apart
    curve_runs: list = field(default_factory=list)
    left_out: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LEFT_OUT_COLUMNS))
    confirmations: pd.DataFrame | None = None  # per confirmed trial: full-budget, multi-seed numbers
    threshold: int | None = None  # the interpolation threshold: training samples x classes (analysis.power)
    power: dict = field(default_factory=dict)  # analysis.power.study_power: the MDD at the study's seed count
    tuning: pd.DataFrame | None = None  # a tuned study: analysis.tuning.choose (None when nothing is tuned)
    epoch_grids: dict = field(default_factory=dict)  # analysis.epochwise.epoch_grids: (size x epoch) per curve

    def left_out_text(self) -> str:
        """'2 trials left out: 1 run RUNNING, 1 stopped at 4 of 40 epochs' (or that none were)."""
        if self.left_out.empty:
            return "no trial left out"
        counts = self.left_out["reason"].value_counts()
        return f"{len(self.left_out)} trials left out: " + ", ".join(f"{n} {reason}" for reason, n in counts.items())


def _short_reasons(short: pd.DataFrame, budget: int | None) -> pd.DataFrame:
    rows = [
        {
            "run_id": t["run_id"],
            "trial_id": t["trial_id"],
            "reason": f"{'diverged' if t.get('outcome') == 'diverged' else 'stopped'} before the {budget}-epoch budget",
        }
        for _, t in short.iterrows()
    ]
    return pd.DataFrame(rows, columns=LEFT_OUT_COLUMNS)


def grouping(trials: pd.DataFrame, kind: str) -> str | None:
    """The column whose values get one curve each: a capacity study's regulariser, else the loss
    when a sweep varies it."""
    for column in ("regulariser",) if kind == "capacity" else ("loss",):
        if column in trials and trials[column].nunique() > 1:
            return column
    return None


def analyse(
    experiment: str,
    trials: pd.DataFrame,
    histories: pd.DataFrame,
    space: dict,
    left_out: pd.DataFrame | None = None,
    kind: str = "sweep",
    include_short: bool = False,
    confirmations: pd.DataFrame | None = None,
    n_val: int | None = None,
    threshold: int | None = None,
) -> StudyReport:
    """``n_val``: the validation split's size (else a ``val_size`` column of the trials, if any): it
    widens the accuracies' intervals by the split's binomial noise. ``threshold``: the interpolation
    threshold, marked on every parameter axis. A tuned capacity study (analysis.tuning) is reported
    at each size's chosen value, from val's reporting half."""
    budget = epochs_of(space)
    full, short = (trials, trials.iloc[0:0]) if include_short else split_by_epochs(trials, budget)
    left = pd.concat(
        [left_out if left_out is not None else pd.DataFrame(columns=LEFT_OUT_COLUMNS), _short_reasons(short, budget)],
        ignore_index=True,
    )
    used = full if not full.empty else trials  # nothing reached the budget: analyse what there is, and say so
    if n_val is None and "val_size" in used and used["val_size"].notna().any():
        n_val = int(used["val_size"].dropna().iloc[0])
    tuning = None
    if kind == "capacity" and tuned_field(used):
        group = grouping(used, kind)
        tuning = choose(used, histories, group=group)
        used, histories = on_reporting_half(used, histories, tuning, group=group)
        n_val = n_val - n_val // 2 if n_val else None  # the reporting half (validation_halves: half a class each)
    top = used.sort_values("val_acc", ascending=False).head(5)["run_id"].tolist()
    largest = used.sort_values("param_count", ascending=False)["run_id"].iloc[0]
    try:
        imp = importances(used, space)
    except (ValueError, RuntimeError):  # fANOVA needs some variety; the report stands without it
        imp = {}
    group = grouping(used, kind)
    sizes = per_size(used, histories, group, n_val=n_val)
    trends, compared = {}, []
    for (g, d), rows in curves(sizes):
        name = curve_name(g, d, sizes)
        trends[name] = {column: curve_trend(rows, column) for column in TREND_METRICS}
        compared.append(comparisons(rows, "final_val_acc").assign(curve=name))
    return StudyReport(
        experiment=experiment,
        trials=used,
        pareto=pareto_front(used),
        overfitting=overfitting_summary(used, histories),
        by_loss=compare_by(used, "loss"),
        by_depth=compare_by(used, "depth"),
        by_batch=compare_by(used, "batch_size"),
        edges=edge_flags(used, space),
        importances=imp,
        trends=trends,
        comparisons=pd.concat(compared, ignore_index=True) if compared else pd.DataFrame(),
        sizes=sizes,
        group=group,
        memorisation={curve_name(g, d, sizes): memorisation(t) for (g, d), t in sizes.groupby(["group", "depth"])},
        epochs=budget,
        short=short,
        curve_runs=top + ([largest] if largest not in top else []),
        left_out=left,
        confirmations=confirmed(confirmations, trials)
        if confirmations is not None and not confirmations.empty
        else None,
        threshold=threshold,
        power=study_power(sizes["final_val_acc_sd"].tolist(), sizes["seeds"].tolist()) if not sizes.empty else {},
        tuning=tuning,
        epoch_grids=epoch_grids(used, histories, group) if kind == "capacity" else {},
    )


def curve_name(group: str, depth: int, sizes: pd.DataFrame) -> str:
    """'augment=none, depth 2' (the group only when depths do not vary, 'all' when neither does)."""
    parts = [] if group == "all" else [str(group)]
    if sizes["depth"].nunique() > 1:
        parts.append(f"depth {depth}")
    return ", ".join(parts) or "all"


def confirmed(confirmations: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Per confirmed trial: its single-seed sweep numbers beside the mean ± sd of its full-budget
    retrainings (rerun --pareto / --top), and the like-for-like check of analysis.statistics.confirmation:
    the retraining with the trial's own seed apart (it reproduces the trial), the independent seeds'
    mean and 95% interval, and luck = sweep - that mean, for the last epoch's and the best epoch's
    val_acc each (like_for_like: the sweep trial ran the confirmations' budget)."""
    ok = confirmations[confirmations["run_status"] == "FINISHED"]
    rows = []
    for run_id, seeds in ok.groupby("confirms"):
        original = trials[trials["run_id"] == run_id]
        row = {
            "confirms": run_id,
            "param_count": int(seeds["param_count"].iloc[0]),
            "hidden_sizes": size_label(seeds["hidden_sizes"].iloc[0]),
            "seeds": len(seeds),
            "epochs": int(seeds["epochs_run"].max()),
            "sweep_val_acc": float(original["val_acc"].iloc[0]) if len(original) else float("nan"),
            "sweep_epochs": float(original["epochs_run"].iloc[0]) if len(original) else float("nan"),
            "best_val_acc": seeds["best_val_acc"].mean(),
            "best_val_acc_sd": seeds["best_val_acc"].std(ddof=1) if len(seeds) > 1 else float("nan"),
            "val_acc": seeds["val_acc"].mean(),
            "train_acc": seeds["train_acc"].mean(),
            "gap": seeds["gap"].mean(),
        }
        if len(original):
            first = original.iloc[0]
            own_seed = _seed_of(first)
            runs = [
                {"seed": _seed_of(s), "final": s["val_acc"], "best": s["best_val_acc"]} for _, s in seeds.iterrows()
            ]
            final, best = confirmation(
                {"seed": own_seed, "final": first["val_acc"], "best": first.get("best_val_acc")}, runs
            )
            row.update(
                like_for_like=bool(row["sweep_epochs"] == row["epochs"]),
                own_seed_val_acc=final["own_seed"],
                independent_seeds=final["independent_seeds"],
                independent_val_acc=final["independent_mean"],
                independent_val_acc_low=final["low"],
                independent_val_acc_high=final["high"],
                luck_val_acc=final["luck"],
                sweep_best_val_acc=best["sweep"],
                independent_best_val_acc=best["independent_mean"],
                luck_best_val_acc=best["luck"],
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table = table.sort_values("param_count").reset_index(drop=True)
    front = pareto_front(table.assign(val_acc=table["best_val_acc"]))
    table["on_confirmed_frontier"] = table["confirms"].isin(front["confirms"])
    return table


def _seed_of(row) -> int | None:
    """A run's training seed: its ``seed`` param, else its seed tag."""
    for key in ("seed", "seed_tag"):
        value = row.get(key)
        if value is not None and not (isinstance(value, float) and pd.isna(value)):
            try:
                return int(value)
            except (TypeError, ValueError):
                continue
    return None


CONFIRMED_LEGEND = (
    "one row per confirmed trial: sweep_* its single-seed sweep numbers (sweep_epochs as run), "
    "best_val_acc .. gap means "
    "over all its full-budget retrainings; like for like: own_seed_val_acc is the retraining with the trial's own seed "
    "(it reproduces the trial), independent_* the other seeds' mean (95% interval) of the last epoch's val_acc and of "
    "the best epoch's (selected on the split it is reported on), luck_* = sweep - that mean; like_for_like: same "
    "budget; on_confirmed_frontier: undominated by confirmed mean best_val_acc and param_count"
)


def make_figures(report: StudyReport, histories: pd.DataFrame, space: dict) -> dict[str, plt.Figure]:
    figs = {
        "capacity.png": figures.capacity_figure(
            report.trials, report.sizes, report.short, report.group, report.threshold
        ),
        "gap.png": figures.gap_figure(report.trials, report.sizes, report.group, report.threshold),
        "learning_curves.png": figures.learning_curves_figure(report.trials, histories, report.curve_runs),
        "hyperparameters.png": figures.hyperparameter_figure(report.trials, space),
        "importance.png": figures.importance_figure(report.importances),
    }
    if report.epoch_grids:
        figs["epochwise.png"] = heatmap_figure(report.epoch_grids, report.threshold)
    if report.tuning is not None:
        figs["tuning.png"] = tuning_figure(report.tuning, report.threshold)
    return figs


def _table(frame: pd.DataFrame, columns: list[str] | None = None, legend: str = "") -> str:
    frame = frame if columns is None else frame[[c for c in columns if c in frame.columns]]
    body = readable(frame).to_html(border=0, classes="t", index=frame.index.name is not None, na_rep="—")
    return (f"<p class='legend'>{html.escape(legend)}</p>" if legend else "") + body


def config_label(row) -> str:
    hidden = size_label(row.get("hidden_sizes", ()) or ())
    extras = []
    for key in ("optimizer", "schedule", "augment"):
        value = row.get(key)
        if isinstance(value, str) and value not in ("constant", "none"):
            extras.append(value)
    for key, short in (("weight_decay", "wd"), ("dropout", "drop")):
        value = row.get(key)
        if isinstance(value, float) and value > 0:
            extras.append(f"{short}={value:.2g}")
    return (
        f"{hidden} {row.get('activation')} {row.get('loss')} {' '.join(extras)} "
        f"lr={row.get('lr', float('nan')):.2g} batch={row.get('batch_size')}"
    ).replace("  ", " ")


def trend_text(t: dict, what: str) -> str:
    """One curve's metric in words: its shape, then a slope with its interval where the curve is
    monotone, or where its peak (dip) is when it is not."""
    if t["slope_per_decade"] is None:
        return f"{what}: not enough sizes for a trend ({t['sizes']} size{'s' if t['sizes'] != 1 else ''})"
    counts = f"{t['sizes']} sizes, {t['trials']} trials"
    if not t["monotone"]:
        where = (
            f"peaks at {t['peak']}"
            if t["shape"] == "single peak"
            else f"dips at {t['dip']}, then rises again"
            + (f" (after a first peak at {t['peak']})" if t["peak"] else "")
            if t["shape"] == "dip-then-rise"
            else f"moves {'-'.join(t['moves'])}"
        )
        return (
            f"{what}: {t['shape']}, not a trend: it {where}; sizes not distinguishable from its highest: "
            f"{', '.join(t['peak_set'])} (no slope reported; {counts})"
        )
    if t["low"] is None:
        interval = "no interval: two sizes leave no residual degrees of freedom"
    else:
        fit = "" if t["lack_of_fit_p"] is None else f"; lack of fit p = {t['lack_of_fit_p']:.2g}"
        interval = f"95% t interval over the size means {t['low']:+.3f} .. {t['high']:+.3f}, {t['df']} df{fit}"
    shape = t["shape"] if not t["shape"].startswith("flat") else f"flat (within ±{t['delta']})"
    return f"{what}: {shape}; {t['slope_per_decade']:+.3f} per tenfold increase in parameters ({interval}; {counts})"


def trend_lines(report: StudyReport) -> list[str]:
    """The trends as sentences, one curve (group and depth) at a time: pooling depths or
    regulariser values would mix curves of different shapes."""
    return [
        trend_text(t[key], f"{curve}: {what}" if curve != "all" else what)
        for curve, t in report.trends.items()
        for key, what in TREND_METRICS.items()
    ]


def memorisation_text(group: str, m: dict) -> str:
    name = "" if group == "all" else f"{group}: "
    if m["memorised_at"] is None:
        return (
            f"{name}no size reaches train_acc 0.99 at the budget; val_acc peaks at {m['val_peak_size']} "
            f"({m['val_peak_at']:,} parameters, {m['val_peak']:.3f})"
        )
    peers = f" (not distinguishable from it: {', '.join(m['peak_set'])})" if len(m.get("peak_set") or []) > 1 else ""
    text = (
        f"{name}train_acc reaches 0.99 from {m['memorised_size']} ({m['memorised_at']:,} parameters) on; "
        f"final val_acc peaks at {m['val_peak_size']} ({m['val_peak_at']:,}, {m['val_peak']:.3f}){peers}, "
        f"{m['peak_vs_memorisation']} that point"
    )
    if m["second_rise"]:
        return (
            text + f"; beyond it val_acc dips and rises again up to {m['second_rise_at']:,} parameters (a second rise)"
        )
    judged = f", judged {m['judged']}" if m.get("judged") else ""
    return text + f"; beyond it val_acc {m['beyond']} (no second rise{judged})"


def threshold_text(report: StudyReport) -> str:
    if not report.threshold:
        return "interpolation threshold: unknown (the study's data.json gives no training size)"
    below = int((report.sizes["param_count"] < report.threshold).sum()) if not report.sizes.empty else 0
    return (
        f"interpolation threshold (training samples x classes): {report.threshold:,} parameters; "
        f"{below} of {len(report.sizes)} sizes lie below it"
    )


def power_line(report: StudyReport) -> str:
    return power_text(report.power) if report.power else "minimum detectable difference: no sizes"


def write_report(report: StudyReport, figs: dict, out: Path) -> list[Path]:
    """Write the PNGs, the per-size CSV and report.html into ``out`` (created); returns the paths.
    Every file is rendered in memory first and then written all-or-nothing (``write_files``)."""
    contents = {name: png_bytes(fig) for name, fig in figs.items()}
    inline = {name: base64.b64encode(data).decode() for name, data in contents.items()}
    contents[TABLE_FILE] = report.sizes.to_csv(index=False).encode()
    pareto = report.pareto.assign(config=[config_label(r) for _, r in report.pareto.iterrows()])
    flagged = report.edges[report.edges["at_edge"]] if not report.edges.empty else report.edges
    edge_text = (
        "none"
        if flagged.empty
        else "; ".join(f"{r.dimension} at its {r.edge} edge ({r.low}..{r.high})" for r in flagged.itertuples())
    )
    budget = f"the {report.epochs}-epoch budget" if report.epochs else "an unknown budget"
    sections = [
        f"<h1>birdplane study: {html.escape(report.experiment)}</h1>",
        f"<p>{len(report.trials)} trials at {budget} ({html.escape(report.left_out_text())}). "
        f"Best val_acc {report.trials['val_acc'].max():.3f}. Searched ranges whose best trials sit at an edge: "
        f"{html.escape(edge_text)}.</p>",
        "<h2>Accuracy against parameter count</h2>",
        _img(inline, "capacity.png"),
        "<ul>"
        + "".join(f"<li>{html.escape(memorisation_text(g, m))}</li>" for g, m in report.memorisation.items())
        + "</ul>",
        "<p>" + html.escape(threshold_text(report)) + "<br>" + html.escape(power_line(report)) + "</p>",
        "<h2>Per size, over seeds</h2>",
        _table(report.sizes, legend=SIZE_TABLE_LEGEND + f" (also in {TABLE_FILE})"),
        "<h2>Generalisation gap</h2>",
        _img(inline, "gap.png"),
        "<p>" + "<br>".join(html.escape(line) + "." for line in trend_lines(report)) + "</p>",
        "<h2>Sizes compared</h2>",
        _table(
            report.comparisons,
            ["curve", "comparison", "a", "b", "diff", "low", "high", "p", "p_holm"],
            legend=COMPARISONS_LEGEND,
        ),
    ]
    if report.tuning is not None:
        sections += [
            "<h2>Tuned per size</h2>",
            _img(inline, "tuning.png"),
            "<p>" + "<br>".join(html.escape(line) for line in shift_text(report.tuning)) + "</p>",
            _table(report.tuning, legend=CHOICE_LEGEND),
        ]
    if report.epoch_grids:
        sections += [
            "<h2>Epoch-wise: val loss and val accuracy over size x epoch</h2>",
            _img(inline, "epochwise.png"),
            "<p class='legend'>means over seeds per size and epoch, one panel pair per curve (group and depth); "
            "dashed: the interpolation threshold"
            + (" ; reporting half of val" if report.tuning is not None else "")
            + "</p>",
        ]
    if report.confirmations is not None:
        sections += ["<h2>Confirmed at the full budget</h2>", _table(report.confirmations, legend=CONFIRMED_LEGEND)]
    sections += [
        "<h2>Pareto set (val_acc up, param_count down)</h2>",
        _table(
            pareto,
            ["trial_id", "param_count", "val_acc", "train_acc", "gap", "config"],
            legend="trials no other beats on both val_acc (final epoch) and parameter count",
        ),
        "<h2>Learning curves</h2>",
        _img(inline, "learning_curves.png"),
        "<h2>Overfitting per trial</h2>",
        _table(
            report.overfitting.sort_values("param_count"),
            ["trial_id", "param_count", "epochs", "best_epoch", "best_val_acc", "final_gap", "val_loss_onset"],
            legend="val_loss_onset: the last epoch where the smoothed val loss (5-epoch mean) was near its "
            "minimum before it left the minimum's band (4 noise units) for at least 10 epochs; '—': none "
            "told from noise; best_val_acc: the best epoch's, selected on the split it is reported on; final_gap: "
            "train_acc - val_acc at the last epoch",
        ),
        "<h2>Hyperparameters</h2>",
        _img(inline, "hyperparameters.png"),
        _table(report.edges, legend="per searched dimension: the best trials' values and whether most sit at an edge"),
        "<h2>By loss</h2>",
        _table(report.by_loss, legend="trials per value; mean, median and best final val_acc"),
        "<h2>By depth</h2>",
        _table(report.by_depth, legend="trials per value; mean, median and best final val_acc"),
        "<h2>By batch size</h2>",
        _table(report.by_batch, legend="trials per value; mean, median and best final val_acc"),
        "<h2>Importance</h2>",
        _img(inline, "importance.png"),
    ]
    if not report.left_out.empty:
        sections += ["<h2>Left out</h2>", _table(report.left_out, legend="trials not in the analysis, and why")]
    style = (
        "body{font-family:sans-serif;max-width:1000px;margin:auto}img{max-width:100%}"
        "table.t{border-collapse:collapse;font-size:13px}table.t td,table.t th{padding:2px 8px;"
        "border-bottom:1px solid #ddd}p.legend{font-size:12px;color:#555}"
    )
    contents["report.html"] = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.experiment)}"
        f"</title><style>{style}</style></head><body>{''.join(sections)}</body></html>"
    ).encode()
    return write_files(out, contents)


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes (closed afterwards)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_files(out: Path, contents: dict[str, bytes]) -> list[Path]:
    """Every file of ``contents`` into folder ``out``, or none of them (trainables.files.atomic_paths:
    the user's umask, nothing half written); a folder this call created is removed again when the
    writes fail. Returns the paths, in the order given."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    targets = [out / name for name in contents]
    try:
        with atomic_paths(targets) as temps:
            for tmp, data in zip(temps, contents.values(), strict=True):
                tmp.write_bytes(data)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return targets


def _img(inline: dict, name: str) -> str:
    return f"<img alt='{name}' src='data:image/png;base64,{inline[name]}'>"
