"""A study's report: figures as PNG files and one self-contained HTML page (figures inlined)."""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from analysis import figures
from analysis.overfitting import (compare_by, edge_flags, gap_trend, importances, overfitting_summary,
                                  pareto_front)

FIGURE_FILES = ("capacity.png", "gap.png", "learning_curves.png", "hyperparameters.png", "importance.png")


@dataclass
class StudyReport:
    """Everything the report shows, computed once; the CLI prints parts of it, files hold all."""

    experiment: str
    trials: pd.DataFrame
    pareto: pd.DataFrame
    overfitting: pd.DataFrame
    by_loss: pd.DataFrame
    by_depth: pd.DataFrame
    by_batch: pd.DataFrame
    edges: pd.DataFrame
    importances: dict
    gap_trend: dict
    curve_runs: list = field(default_factory=list)
    left_out: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["run_id", "trial_id", "reason"]))

    def left_out_text(self) -> str:
        """'2 trials left out: 1 run RUNNING, 1 run FAILED' (or that none were)."""
        if self.left_out.empty:
            return "no trial left out"
        counts = self.left_out["reason"].value_counts()
        return f"{len(self.left_out)} trials left out: " + ", ".join(f"{n} {reason}" for reason, n in counts.items())


def analyse(experiment: str, trials: pd.DataFrame, histories: pd.DataFrame, space: dict,
            left_out: pd.DataFrame | None = None) -> StudyReport:
    top = trials.sort_values("val_acc", ascending=False).head(5)["run_id"].tolist()
    largest = trials.sort_values("param_count", ascending=False)["run_id"].iloc[0]
    curve_runs = top + ([largest] if largest not in top else [])
    try:
        imp = importances(trials, space)
    except (ValueError, RuntimeError):  # fANOVA needs some variety; the report stands without it
        imp = {}
    return StudyReport(
        experiment=experiment, trials=trials, pareto=pareto_front(trials),
        overfitting=overfitting_summary(trials, histories), by_loss=compare_by(trials, "loss"),
        by_depth=compare_by(trials, "depth"), by_batch=compare_by(trials, "batch_size"),
        edges=edge_flags(trials, space), importances=imp, gap_trend=gap_trend(trials), curve_runs=curve_runs,
        **({"left_out": left_out} if left_out is not None else {}))


def make_figures(report: StudyReport, histories: pd.DataFrame, space: dict) -> dict[str, "plt.Figure"]:
    return {
        "capacity.png": figures.capacity_figure(report.trials),
        "gap.png": figures.gap_figure(report.trials),
        "learning_curves.png": figures.learning_curves_figure(report.trials, histories, report.curve_runs),
        "hyperparameters.png": figures.hyperparameter_figure(report.trials, space),
        "importance.png": figures.importance_figure(report.importances),
    }


def _table(frame: pd.DataFrame, columns: list[str] | None = None) -> str:
    frame = frame if columns is None else frame[[c for c in columns if c in frame.columns]]
    return frame.to_html(float_format=lambda v: f"{v:.4g}", border=0, classes="t", index=frame.index.name is not None)


def config_label(row) -> str:
    hidden = ",".join(str(h) for h in row.get("hidden_sizes", ()) or ())
    return (f"[{hidden}] {row.get('activation')} {row.get('loss')} {row.get('optimizer')} "
            f"lr={row.get('lr', float('nan')):.2g} batch={row.get('batch_size')}")


def write_report(report: StudyReport, figs: dict, out: Path) -> list[Path]:
    """Write the PNGs and report.html into ``out`` (created); returns the written paths."""
    out.mkdir(parents=True, exist_ok=True)
    written, inline = [], {}
    for name, fig in figs.items():
        path = out / name
        fig.savefig(path, dpi=110)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        inline[name] = base64.b64encode(buf.getvalue()).decode()
        written.append(path)
    pareto = report.pareto.assign(config=[config_label(r) for _, r in report.pareto.iterrows()])
    t = report.gap_trend
    trend = ("not enough trials" if t["slope_per_decade"] is None else
             f"the final gap changes by {t['slope_per_decade']:+.3f} per tenfold increase in parameters "
             f"(correlation {t['correlation'] if t['correlation'] is not None else float('nan'):.2f}, {t['trials']} trials)")
    flagged = report.edges[report.edges["at_edge"]] if not report.edges.empty else report.edges
    edge_text = ("none" if flagged.empty else
                 "; ".join(f"{r.dimension} at its {r.edge} edge ({r.low}..{r.high})" for r in flagged.itertuples()))
    sections = [
        f"<h1>birdplane study: {html.escape(report.experiment)}</h1>",
        f"<p>{len(report.trials)} finished trials ({html.escape(report.left_out_text())}). "
        f"Best val_acc {report.trials['val_acc'].max():.4f}. "
        f"Gap trend: {html.escape(trend)}. Searched ranges whose best trials sit at an edge: {html.escape(edge_text)}.</p>",
        "<h2>Accuracy against parameter count</h2>", _img(inline, "capacity.png"),
        "<h2>Pareto set (val_acc up, param_count down)</h2>",
        _table(pareto, ["trial_id", "param_count", "val_acc", "train_acc", "gap", "config"]),
        "<h2>Generalisation gap</h2>", _img(inline, "gap.png"),
        "<h2>Learning curves</h2>", _img(inline, "learning_curves.png"),
        "<h2>Overfitting per trial</h2><p>onset: the first epoch after which val_acc never returns to its "
        "level while train_acc stays above its level.</p>",
        _table(report.overfitting.sort_values("param_count"),
               ["trial_id", "param_count", "epochs", "best_epoch", "best_val_acc", "final_gap", "onset"]),
        "<h2>Hyperparameters</h2>", _img(inline, "hyperparameters.png"), _table(report.edges),
        "<h2>By loss</h2>", _table(report.by_loss), "<h2>By depth</h2>", _table(report.by_depth),
        "<h2>By batch size</h2>", _table(report.by_batch),
        "<h2>Importance</h2>", _img(inline, "importance.png"),
    ]
    style = ("body{font-family:sans-serif;max-width:1000px;margin:auto}img{max-width:100%}"
             "table.t{border-collapse:collapse;font-size:13px}table.t td,table.t th{padding:2px 8px;"
             "border-bottom:1px solid #ddd}")
    page = out / "report.html"
    page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.experiment)}"
                    f"</title><style>{style}</style></head><body>{''.join(sections)}</body></html>")
    return written + [page]


def _img(inline: dict, name: str) -> str:
    return f"<img alt='{name}' src='data:image/png;base64,{inline[name]}'>"
