"""Saved models: the best configuration's chosen draw as a self-contained folder, and loading it
back for prediction with its configured inference mode."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import RunConfig, build_config
from ..data import Corpus, tokenize
from ..errors import TunedMLError
from ..evaluate import forward_all, predict
from ..losses import build_loss
from ..model import build_model, load_tokenizer
from ..results import Candidate, Comparison, DrawResult, Snapshot
from ..stages import encoder_ce_weight

MODEL_FILES = ("encoder", "head.pt", "config.yaml", "labels.json")


def save_model(
    path: str | Path, candidate: Candidate, snapshot: Snapshot, label_names: list[str], draw: DrawResult | None = None
) -> Path:
    """A self-contained folder: the encoder (Hugging Face format, with its tokenizer), the head and
    loss weights (proxies) with class centers, the run config and the label names."""
    if snapshot.state is None:
        raise ValueError("this snapshot holds no weights; retrain with keep_model=True")
    cfg = candidate.run_config
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg.model.name, len(label_names), cfg.model.pooling, cfg.model.dropout)
    model.load_state_dict(snapshot.state["model"])
    model.encoder.save_pretrained(folder / "encoder")
    load_tokenizer(cfg.model.name).save_pretrained(folder / "encoder")
    centers = torch.from_numpy(snapshot.prototypes) if snapshot.prototype_kind == "class centers" else None
    torch.save(
        {"head": model.head.state_dict(), "loss": snapshot.state["loss"], "centers": centers}, folder / "head.pt"
    )
    (folder / "config.yaml").write_text(cfg.to_yaml())
    meta = {
        "labels": label_names,
        "source": candidate.source,
        "model": cfg.model.name,
        "draw": draw.__dict__ if draw else None,
    }
    (folder / "labels.json").write_text(json.dumps(meta, indent=2))
    return folder


def save_top_model(comparison: Comparison, folder: str | None = None) -> Path | None:
    """Save the best configuration's chosen draw (kept by ``keep_model``); default folder
    ``tunedml_models/<dataset>-<loss>-<time>``. None when there is none (every draw failed)."""
    snapshot = comparison.snapshots.get("best")
    if snapshot is None or snapshot.state is None:
        return None
    candidate = comparison.best.candidate
    name = f"{Path(comparison.dataset).name}-{candidate.loss}-{time.strftime('%Y%m%d-%H%M%S')}"
    draw = next(d for d in comparison.best.draws if d.index == comparison.best_draw)
    return save_model(folder or Path("tunedml_models") / name, candidate, snapshot, comparison.label_names, draw)


@dataclass
class SavedModel:
    """A retrained model loaded for prediction with its configured inference mode."""

    cfg: RunConfig
    model: Any
    loss: Any
    centers: Any
    tokenizer: Any
    label_names: list[str]

    def predict_ids(self, texts: list[str]) -> np.ndarray:
        corpus = Corpus(
            "predict", list(texts), np.zeros(len(texts), dtype=np.int64), self.label_names, np.arange(len(texts)), None
        )
        tokens = tokenize(corpus, self.tokenizer, self.cfg.data.max_length)
        device = next(self.model.parameters()).device
        out = forward_all(self.model, tokens, np.arange(len(texts)), self.cfg.train.eval_batch_size, device)
        inf = self.cfg.inference
        return predict(inf.mode, out, self.loss, self.centers, inf.mix_weight, inf.proxy_scale)

    def predict(self, texts: list[str]) -> list[str]:
        """Label names for ``texts``."""
        return [self.label_names[i] for i in self.predict_ids(texts)]


def load_model(path: str | Path) -> SavedModel:
    """Load a folder written by :func:`save_model` (or `tunedml retrain --save-model`)."""
    folder = Path(path)
    missing = [f for f in MODEL_FILES if not (folder / f).exists()]
    if missing:
        raise TunedMLError(f"{folder}: not a saved tunedml model (missing {', '.join(missing)})")
    labels = json.loads((folder / "labels.json").read_text())["labels"]
    cfg = build_config(str(folder / "config.yaml")).with_overrides({"model.name": str(folder / "encoder")})
    model = build_model(cfg.model.name, len(labels), cfg.model.pooling, cfg.model.dropout)
    weights = torch.load(folder / "head.pt", map_location="cpu", weights_only=True)
    model.head.load_state_dict(weights["head"])
    loss = build_loss(
        cfg.loss.name,
        encoder_ce_weight(cfg),
        cfg.loss.dml_weight,
        cfg.loss.params,
        len(labels),
        model.hidden_size,
        weighting=cfg.loss.weighting,
    )
    loss.load_state_dict(weights["loss"])
    model.eval()
    return SavedModel(cfg, model, loss, weights["centers"], load_tokenizer(cfg.model.name), labels)
