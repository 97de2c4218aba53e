"""A user's own architectures, outside the model zoo, for the allow-list and signature tests."""

from __future__ import annotations

from torch import nn


class TinyNet(nn.Module):
    """Flatten -> Linear(hidden) -> ReLU -> Linear."""

    def __init__(self, input_shape: list[int], num_classes: int, hidden: int = 8):
        super().__init__()
        n = 1
        for d in input_shape:
            n *= int(d)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


class NeedsDepth(nn.Module):
    """A constructor with a required argument that slimray cannot fill from the data."""

    def __init__(self, input_shape: list[int], num_classes: int, depth: int):
        super().__init__()
        self.head = nn.Linear(int(input_shape[-1]), num_classes)

    def forward(self, x):
        return self.head(x)


class TinyBert(nn.Module):
    """A user's text classifier around a small random-initialised Hugging Face ``BertModel``
    (built from a config, no weights needed): token ids ``[N, L]`` -> ``[N, n_classes]``."""

    def __init__(self, vocab: int, n_classes: int, hidden: int = 32, layers: int = 2, heads: int = 4, ffn: int = 64):
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = BertConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=ffn,
            max_position_embeddings=64,
            attn_implementation="eager",
        )
        self.bert = BertModel(cfg, add_pooling_layer=False)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, ids):
        return self.head(self.bert(input_ids=ids).last_hidden_state[:, 0])
