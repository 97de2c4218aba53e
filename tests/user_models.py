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


class FusedAttention(nn.Module):
    """timm-style self-attention: one fused ``qkv`` projection split into ``num_heads`` heads."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        att = ((q @ k.transpose(-2, -1)) * self.head_dim**-0.5).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, -1))


class SeqTransformer(nn.Module):
    """A user's small transformer over a 1-D signal cut into patches: LayerNorm, attention, SiLU MLP,
    residual additions; its own argument names (``seq_len``, ``n_out``)."""

    def __init__(self, seq_len: int, n_out: int, patch: int = 4, dim: int = 16, heads: int = 4, mlp: int = 32):
        super().__init__()
        self.patch, self.tokens = patch, seq_len // patch
        self.embed = nn.Linear(patch, dim)
        self.norm1, self.attn = nn.LayerNorm(dim), FusedAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.SiLU(), nn.Linear(mlp, dim))
        self.head = nn.Linear(dim, n_out)

    def forward(self, x):
        h = self.embed(x.reshape(x.shape[0], self.tokens, self.patch))
        h = h + self.attn(self.norm1(h))
        h = h + self.mlp(self.norm2(h))
        return self.head(h.mean(1))
