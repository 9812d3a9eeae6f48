"""What a finished search leaves: the best config as a training YAML, the study's plots (PNG
and HTML), summary.json and the table `atelier tune` prints."""

from __future__ import annotations

import html
import io
import json
import os
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from atelier.training.config import TrainConfig, dump_config
from atelier.training.tune.space import apply_params
from atelier.training.tune.study import counts

BEST_CONFIG = "best.yaml"
SUMMARY = "summary.json"
PLOTS_DIR = "plots"


def best_config(base: TrainConfig, best: FrozenTrial) -> TrainConfig:
    """The base config with the best trial's values: ready for `atelier train --config` (the
    trial's own threads and gate are not carried over; the base's hold)."""
    return apply_params(base, dict(best.params))


def write_best_config(out_dir: Path, study: optuna.Study, base: TrainConfig) -> Path:
    best = study.best_trial
    cfg = best_config(base, best)
    header = (
        f"# Written by `atelier tune`: study {study.study_name}, trial {best.number}, "
        f"validation accuracy {best.value:.4f}.\n"
        f"# Train it: atelier train --config {out_dir / BEST_CONFIG}\n"
    )
    path = out_dir / BEST_CONFIG
    tmp = path.with_suffix(".tmp")
    tmp.write_text(header + dump_config(cfg))
    os.replace(tmp, path)
    return path


def _save(fig: Any, stem: Path, title: str) -> None:
    fig.savefig(stem.with_suffix(".png"), dpi=110, bbox_inches="tight")
    svg = io.StringIO()
    fig.savefig(svg, format="svg", bbox_inches="tight")
    page = (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f"{svg.getvalue().split('?>', 1)[-1]}\n</body></html>\n"
    )
    stem.with_suffix(".html").write_text(page)


def write_plots(out_dir: Path, study: optuna.Study) -> dict[str, str]:
    """Optimisation history, intermediate values (what the pruner saw) and parameter
    importances, each as PNG and as an HTML page with the SVG inline. Returns plots that
    could not be drawn, with the reason."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    plots = out_dir / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    name = study.study_name
    skipped: dict[str, str] = {}
    drawers = {
        "optimization_history": (ovm.plot_optimization_history, "optimisation history"),
        "intermediate_values": (ovm.plot_intermediate_values, "intermediate values"),
        "param_importances": (ovm.plot_param_importances, "parameter importances"),
    }
    for stem, (draw, title) in drawers.items():
        try:
            ax = draw(study)
        except (ValueError, RuntimeError) as exc:  # e.g. too few completed trials
            skipped[stem] = str(exc).splitlines()[0]
            continue
        fig = ax.get_figure(root=True)
        _save(fig, plots / stem, f"{name}: {title}")
        plt.close(fig)
    return skipped


def trial_rows(trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    rows = []
    for t in trials:
        steps = sorted(t.intermediate_values)
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "steps": len(steps),
                "test_accuracy": t.user_attrs.get("test_accuracy"),
                "seconds": t.user_attrs.get("seconds"),
                "worker": t.user_attrs.get("worker"),
                "params": dict(t.params),
                "error": t.user_attrs.get("error"),
                "run_dir": t.user_attrs.get("run_dir"),
            }
        )
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.01:
            return f"{value:.3g}"
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.1f}"
    return str(value)


def table(trials: list[FrozenTrial], param_names: list[str]) -> str:
    """One line per trial: state, validation accuracy (objective), steps reported, test
    accuracy, seconds, worker and every searched parameter (by its last key part)."""
    head = ["trial", "state", "val_acc", "steps", "test_acc", "seconds", "worker"]
    head += [p.split(".")[-1] for p in param_names]
    lines = [head]
    for r in trial_rows(trials):
        cells = [r["number"], r["state"], r["value"], r["steps"], r["test_accuracy"]]
        cells += [r["seconds"], r["worker"]]
        cells += [r["params"].get(p) for p in param_names]
        lines.append([_fmt(c) for c in cells])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            c.rjust(w) if i != 1 else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in lines
    )


def write_summary(out_dir: Path, study: optuna.Study, extra: dict[str, Any]) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value or 0.0) if complete else None
    summary = {
        "study": study.study_name,
        "counts": {k: v for k, v in counts(trials).items() if v},
        "best": None
        if best is None
        else {
            "number": best.number,
            "val_accuracy": best.value,
            "test_accuracy": best.user_attrs.get("test_accuracy"),
            "params": best.params,
        },
        **extra,
        "trials": trial_rows(trials),
    }
    tmp = out_dir / (SUMMARY + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out_dir / SUMMARY)
    return summary
