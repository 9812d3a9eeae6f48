"""The run's model card (``model_card.md``): what was trained on what, how well, and its limits.

Written into every run folder by `atelier train` from ``metrics.json`` and the resolved
config, and logged with the run when it is tracked. `atelier archive` adds the version's own
``model_card.json`` (store version, .mar digest, registry version) beside the .mar.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from atelier.training.config import TrainConfig

MODEL_CARD_FILE = "model_card.md"


def render_model_card(cfg: TrainConfig, metrics: dict[str, Any]) -> str:
    data = metrics.get("data", {})
    sizes = data.get("split", {}).get("sizes", {})
    weighted = metrics.get("weighted", {})
    robust = metrics.get("robustness", {})
    gate = metrics.get("gate", {})
    lines = [
        f"# Model card: {cfg.name}",
        "",
        f"- Architecture: `{metrics.get('arch')}` CNN, {metrics.get('params', 0):,} parameters, "
        f"dropout {cfg.model.dropout}",
        f"- Data: {data.get('source')} at `{data.get('path')}`; train {sizes.get('train')}, "
        f"validation {sizes.get('val')}, test {sizes.get('test')} images",
        f"- Training: {metrics.get('epochs_run')} epochs ({metrics.get('stop_reason')}), "
        f"{metrics.get('train_seconds')} s on {metrics.get('threads')} threads, "
        f"optimizer {cfg.optim.name} lr {cfg.optim.lr} ({cfg.optim.schedule})",
        f"- Code: git commit `{metrics.get('git_commit', 'unknown')}`",
        "",
        "## Results on the test split",
        "",
        f"- Accuracy: **{metrics.get('test_accuracy', 0):.4f}**",
        f"- Weighted precision {weighted.get('precision', 0):.4f}, recall "
        f"{weighted.get('recall', 0):.4f}, F1 {weighted.get('f1', 0):.4f}",
    ]
    for name, shift in robust.items():
        setting = ", ".join(f"{k} {v}" for k, v in shift.items() if k != "accuracy")
        lines.append(
            f"- Accuracy under {name.replace('_', ' ')} ({setting}): {shift['accuracy']:.4f}"
        )
    verdict = "passed" if gate.get("passed") else "FAILED"
    lines += [
        f"- Quality gate (test accuracy >= {gate.get('min_accuracy')}): {verdict}",
        "",
        "| class | precision | recall | F1 | support |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, c in metrics.get("per_class", {}).items():
        scores = " | ".join(f"{c[k]:.4f}" for k in ("precision", "recall", "f1"))
        lines.append(f"| {name} | {scores} | {c['support']} |")
    lines += [
        "",
        "## Intended use and limits",
        "",
        "Classifies single grayscale garment images like the training data's. Accuracy drops",
        "under shifts it never saw (the robustness lines above): the drift sidecar watches for",
        "them in serving. The resolved config is `config.yaml` beside this card.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(cfg: TrainConfig, metrics: dict[str, Any], out_dir: Path) -> Path:
    path = out_dir / MODEL_CARD_FILE
    path.write_text(render_model_card(cfg, metrics))
    return path
