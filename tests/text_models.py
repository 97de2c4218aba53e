"""Small random-initialised transformers and text data for the NLP tests (no weights needed)."""

from __future__ import annotations

import torch

from tasks.core.options import TaskKind
from tasks.core.types import Dataset
from tasks.models.transformer import TEXT_INPUTS, SentenceEncoder, encoder_arch

TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 200,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
}
TRUSTED = (encoder_arch(TINY_BERT)["_target_"],)


def tiny_encoder(layers: int = 2, seed: int = 0) -> tuple[SentenceEncoder, dict]:
    """(model, arch) of a 2-layer, 32-wide BERT with seeded random weights."""
    torch.manual_seed(seed)
    arch = encoder_arch({**TINY_BERT, "num_hidden_layers": layers})
    model = SentenceEncoder(arch["config"], arch["normalize"])
    return model.eval(), arch


def token_rows(n: int, seq_len: int = 16, seed: int = 0) -> torch.Tensor:
    """``[n, 3, seq_len]`` stacked token rows: random ids, a random real length (>= 3), zero padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TINY_BERT["vocab_size"], (n, seq_len), generator=g)
    lengths = torch.randint(3, seq_len + 1, (n,), generator=g)
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    return torch.stack([ids * mask, mask, torch.zeros_like(ids)], dim=1)


def text_dataset(n_train: int = 64, seq_len: int = 16) -> Dataset:
    """An ``embedding`` Dataset of random token rows (train / val / test / calib)."""
    x = token_rows(n_train + 96, seq_len)
    no_label = lambda t: torch.full((len(t),), -1)  # noqa: E731
    tr, va, te, ca = x[:n_train], x[n_train : n_train + 32], x[n_train + 32 : n_train + 64], x[n_train + 64 :]
    return Dataset(
        name="tokens",
        x_train=tr,
        y_train=no_label(tr),
        x_val=va,
        y_val=no_label(va),
        x_test=te,
        y_test=no_label(te),
        num_classes=0,
        task=TaskKind.embedding.value,
        input_names=list(TEXT_INPUTS),
        x_calib=ca,
    )


def encoder_artifact(data: Dataset):
    """The tiny encoder as a teacher artifact with its ONNX exported once (as the export step would)."""
    from tasks.models.build import make_artifact
    from tasks.runtime.onnx import data_onnx

    model, arch = tiny_encoder()
    art = make_artifact(model, arch, name="encoder", kind="teacher")
    art.onnx = data_onnx(model, data)
    return art
