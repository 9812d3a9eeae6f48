"""`atelier train`: read the data, train, evaluate, gate, and write a run folder."""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from atelier.runtime.errors import ConfigError, GateFailedError
from atelier.runtime.features import FEATURE_SCHEMA_VERSION, all_features
from atelier.runtime.inference import MODEL_CONFIG_FILE, WEIGHTS_FILE, Classifier, ModelSpec
from atelier.runtime.model import build_model, count_parameters
from atelier.runtime.preprocess import normalize
from atelier.training.config import TrainConfig, dump_config
from atelier.training.data import Splits, load_splits
from atelier.training.data.augment import augment_batch
from atelier.training.evaluate import (
    confusion_matrix,
    per_class_report,
    robustness,
    weighted_means,
)
from atelier.training.model_card import write_model_card
from atelier.training.plots import augmentation_grid_png, confusion_matrix_png, training_curves_png
from atelier.training.tracking import Tracker, git_commit

REFERENCE_FILE = "reference_profile.csv"
METRICS_FILE = "metrics.json"
LAST_CHECKPOINT = "checkpoints/last.pt"

console = Console(stderr=True, soft_wrap=True)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=o.lr,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
            nesterov=o.momentum > 0,
        )
    return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def _make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    o = cfg.optim
    total = cfg.train.epochs * steps_per_epoch
    if o.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=o.lr, total_steps=total, pct_start=0.2
        )
    if o.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if o.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(
            opt, step_size=o.step_size * steps_per_epoch, gamma=o.gamma
        )
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    f = x.astype(np.float64) / 255.0
    mean = f.mean(axis=(0, 2, 3))
    std = f.std(axis=(0, 2, 3))
    return [round(float(m), 6) for m in mean], [round(float(max(s, 1e-3)), 6) for s in std]


@torch.inference_mode()
def _evaluate_loss_acc(
    model: torch.nn.Module, spec: ModelSpec, x: np.ndarray, y: np.ndarray, batch_size: int
) -> tuple[float, float]:
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb = normalize(torch.from_numpy(x[start : start + batch_size]), spec.mean, spec.std)
        yb = torch.from_numpy(y[start : start + batch_size])
        logits = model(xb.contiguous(memory_format=torch.channels_last))
        total_loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    return total_loss / len(x), correct / len(x)


def _check_resume(cfg: TrainConfig, saved: dict[str, Any]) -> None:
    """A resumed run must use the checkpoint's config. The time budget may change, and so
    may the number of epochs when the learning-rate schedule does not depend on it."""
    free = {"time_budget_seconds"}
    if cfg.optim.schedule in ("constant", "step"):
        free.add("epochs")
    a = cfg.model_dump(mode="json")
    b = dict(saved)
    for c in (a, b):
        c["train"] = {k: v for k, v in c["train"].items() if k not in free}
    if a != b:
        diff = sorted(k for k in a if a.get(k) != b.get(k))
        raise ConfigError(
            f"--resume: the config differs from the checkpoint's in section(s) {', '.join(diff)}",
            hint=f"resume with the same config (free to change: {', '.join(sorted(free))}) "
            "or use a new --out",
        )


def check_out_dir(out_dir: Path, resume: bool) -> None:
    """A new run needs a folder without a finished run in it; --resume needs a checkpoint."""
    ckpt_path = out_dir / LAST_CHECKPOINT
    if resume and not ckpt_path.is_file():
        raise ConfigError(
            f"--resume: no checkpoint at {ckpt_path}", hint="train without --resume first"
        )
    if not resume and (out_dir / METRICS_FILE).exists():
        raise ConfigError(
            f"{out_dir} already holds a finished run", hint="pick a new --out or use --resume"
        )


# Called after every epoch with the epoch number and its metrics.jsonl row; an exception it
# raises stops the run (`atelier tune` reports to Optuna here and prunes by raising).
EpochCallback = Callable[[int, dict[str, Any]], None]


def train(
    cfg: TrainConfig,
    out_dir: Path,
    resume: bool = False,
    tracker: Tracker | None = None,
    *,
    splits: Splits | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> RunResult:
    """Train per ``cfg`` into ``out_dir``. Raises GateFailedError below the quality gate.

    ``tracker`` (atelier.training.tracking) hears of the data, every epoch and the final
    metrics and files, before the gate is applied. ``splits`` replaces the data ``cfg.data``
    names (`atelier tune`: cached data, k-fold splits); ``on_epoch_end`` is called after each
    epoch's checkpoint is written."""
    threads = cfg.train.threads or max(1, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    seed_everything(cfg.train.seed)
    ckpt_path = out_dir / LAST_CHECKPOINT
    check_out_dir(out_dir, resume)
    # A refused resume answers before the data are read and before the folder is touched.
    state: dict[str, Any] | None = None
    if resume:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        _check_resume(cfg, state["config"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "checkpoints").mkdir(exist_ok=True)

    splits = splits or load_splits(cfg.data, cfg.train.seed)
    console.print(f"data: {cfg.data.source} {splits.sizes()} classes={len(splits.class_names)}")
    if tracker is not None:
        tracker.data_loaded(splits.identity)
    mean, std = _channel_stats(splits.train_x)
    spec = ModelSpec(
        arch=cfg.model.arch,
        in_channels=cfg.data.channels,
        image_size=cfg.data.image_size,
        num_classes=len(splits.class_names),
        class_names=splits.class_names,
        mean=mean,
        std=std,
        dropout=cfg.model.dropout,
        name=cfg.name,
    )
    model = build_model(spec.arch, spec.in_channels, spec.num_classes, spec.dropout)
    model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    params = count_parameters(model)
    console.print(f"model: {spec.arch}, {params:,} parameters")

    (out_dir / "config.yaml").write_text(dump_config(cfg))
    (out_dir / MODEL_CONFIG_FILE).write_text(spec.to_json())
    (out_dir / "data.json").write_text(json.dumps(splits.identity, indent=2))

    steps_per_epoch = (len(splits.train_y) + cfg.train.batch_size - 1) // cfg.train.batch_size
    opt = _make_optimizer(cfg, model)
    sched = _make_scheduler(cfg, opt, steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    history: list[dict[str, Any]] = []
    best_acc, bad_epochs, start_epoch, train_seconds = -1.0, 0, 1, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history, best_acc, bad_epochs = state["history"], state["best_acc"], state["bad_epochs"]
        start_epoch, train_seconds = state["epoch"] + 1, state["train_seconds"]
        console.print(f"resuming after epoch {state['epoch']}")
    else:
        (out_dir / "metrics.jsonl").write_text("")
        _save_augmentation_grid(splits, cfg, out_dir)

    train_x = torch.from_numpy(splits.train_x)
    train_y = torch.from_numpy(splits.train_y)
    stop_reason = "epochs"
    with Progress(
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.4f}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        for epoch in range(start_epoch, cfg.train.epochs + 1):
            if bad_epochs >= cfg.train.patience:
                stop_reason = "early_stopping"
                break
            if cfg.train.time_budget_seconds and train_seconds >= cfg.train.time_budget_seconds:
                stop_reason = "time_budget"
                break
            task = progress.add_task("train", total=steps_per_epoch, epoch=epoch, loss=0.0, acc=0.0)
            model.train()
            t0 = time.perf_counter()
            order = torch.randperm(len(train_y), generator=gen)
            seen, loss_sum, correct = 0, 0.0, 0
            for step in range(steps_per_epoch):
                idx = order[step * cfg.train.batch_size : (step + 1) * cfg.train.batch_size]
                xb = train_x[idx].float() / 255.0
                xb = augment_batch(xb, cfg.augment, gen)
                xb = normalize(xb, spec.mean, spec.std).contiguous(
                    memory_format=torch.channels_last
                )
                yb = train_y[idx]
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                seen += len(yb)
                loss_sum += loss.item() * len(yb)
                correct += int((logits.argmax(1) == yb).sum())
                progress.update(task, advance=1, loss=loss_sum / seen, acc=correct / seen)
            progress.remove_task(task)
            epoch_seconds = time.perf_counter() - t0
            train_seconds += epoch_seconds
            val_loss, val_acc = _evaluate_loss_acc(
                model, spec, splits.val_x, splits.val_y, cfg.train.eval_batch_size
            )
            row = {
                "epoch": epoch,
                "train_loss": round(loss_sum / seen, 6),
                "train_accuracy": round(correct / seen, 6),
                "val_loss": round(val_loss, 6),
                "val_accuracy": round(val_acc, 6),
                "lr": opt.param_groups[0]["lr"],
                "epoch_seconds": round(epoch_seconds, 2),
                "images_per_second": round(seen / max(epoch_seconds, 1e-9), 1),
            }
            history.append(row)
            if tracker is not None:
                tracker.epoch_end(row)
            with (out_dir / "metrics.jsonl").open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            improved = val_acc > best_acc + cfg.train.min_delta
            if improved:
                best_acc, bad_epochs = val_acc, 0
                torch.save(model.state_dict(), out_dir / WEIGHTS_FILE)
            else:
                bad_epochs += 1
            console.print(
                f"epoch {epoch:>3}  train loss {row['train_loss']:.4f} "
                f"acc {row['train_accuracy']:.4f}"
                f"  val loss {val_loss:.4f} acc {val_acc:.4f}  {epoch_seconds:.1f}s"
                + ("  *best" if improved else "")
            )
            torch.save(
                {
                    "config": cfg.model_dump(mode="json"),
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                    "best_acc": best_acc,
                    "bad_epochs": bad_epochs,
                    "epoch": epoch,
                    "train_seconds": train_seconds,
                },
                ckpt_path.with_suffix(".tmp"),
            )
            os.replace(ckpt_path.with_suffix(".tmp"), ckpt_path)
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
    torch.save(model.state_dict(), out_dir / "checkpoints" / "last_weights.pt")

    clf = Classifier.from_dir(out_dir)
    metrics = _evaluate_run(cfg, clf, splits, history, out_dir)
    metrics.update(
        params=params,
        train_seconds=round(train_seconds, 2),
        epochs_run=len(history),
        stop_reason=stop_reason,
        git_commit=git_commit(),
        name=cfg.name,
        arch=spec.arch,
        threads=threads,
    )
    passed = metrics["test_accuracy"] >= cfg.gate.min_accuracy
    metrics["gate"] = {"min_accuracy": cfg.gate.min_accuracy, "passed": passed}
    tmp = out_dir / (METRICS_FILE + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2))
    os.replace(tmp, out_dir / METRICS_FILE)
    write_model_card(cfg, metrics, out_dir)
    if tracker is not None:
        tracker.run_end(metrics, out_dir)
    if not passed:
        raise GateFailedError(
            f"test accuracy {metrics['test_accuracy']:.4f} is below gate.min_accuracy "
            f"{cfg.gate.min_accuracy:.4f}; nothing published (run kept in {out_dir})",
            hint="train longer or with a larger model, or lower gate.min_accuracy on purpose",
        )
    return RunResult(out_dir, metrics)


def _save_augmentation_grid(splits: Splits, cfg: TrainConfig, out_dir: Path) -> None:
    originals = torch.from_numpy(splits.train_x[:10]).float() / 255.0
    shown = cfg.augment.model_copy(update={"probability": 1.0, "enabled": True})
    augmented = augment_batch(originals, shown, torch.Generator().manual_seed(cfg.train.seed))
    augmentation_grid_png(originals.numpy(), augmented.numpy(), out_dir / "augmentation.png")


def _evaluate_run(
    cfg: TrainConfig, clf: Classifier, splits: Splits, history: list[dict[str, Any]], out_dir: Path
) -> dict[str, Any]:
    probs = clf.predict_proba(splits.test_x)
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(splits.test_y, pred, clf.spec.num_classes)
    test_acc = float((pred == splits.test_y).mean())
    confusion_matrix_png(
        cm,
        clf.spec.class_names,
        out_dir / "confusion_matrix.png",
        f"{cfg.name} ({clf.spec.arch}) test accuracy {test_acc:.4f}",
    )
    if history:
        training_curves_png(history, out_dir / "training_curves.png")

    val_probs = clf.predict_proba(splits.val_x)
    val_pred = val_probs.argmax(axis=1)
    feats = all_features(splits.val_x, val_probs)
    ref = pd.DataFrame(feats)
    ref["label"] = splits.val_y
    ref.to_csv(out_dir / REFERENCE_FILE, index=False, float_format="%.6g")

    return {
        "test_accuracy": round(test_acc, 6),
        "val_accuracy": round(float((val_pred == splits.val_y).mean()), 6),
        "test_size": len(splits.test_y),
        "per_class": per_class_report(cm, clf.spec.class_names),
        "weighted": weighted_means(per_class_report(cm, clf.spec.class_names)),
        "confusion_matrix": cm.tolist(),
        "robustness": robustness(clf, splits.test_x, splits.test_y, cfg.robustness, cfg.train.seed),
        "reference_profile": {
            "file": REFERENCE_FILE,
            "rows": len(ref),
            "feature_schema_version": FEATURE_SCHEMA_VERSION,
        },
        "data": splits.identity,
    }
