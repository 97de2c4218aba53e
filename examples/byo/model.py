"""A user's own model, written without slimray in mind: its constructor names are its own
(``in_ch``, ``length``, ``n_classes``), and it uses BatchNorm, residual additions, GELU, a
depthwise convolution and a LayerNorm head. slimray compresses it unchanged (see
docs/your-own-model.md); ``conf/model/byo_resnet1d.yaml`` maps the data to these argument names.
"""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    """Pointwise expand -> depthwise conv -> pointwise project, added back to the input."""

    def __init__(self, ch: int, hidden: int, kernel: int):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv1d(ch, hidden, 1, bias=False), nn.BatchNorm1d(hidden), nn.GELU())
        self.depthwise = nn.Sequential(
            nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.GELU(),
        )
        self.project = nn.Sequential(nn.Conv1d(hidden, ch, 1, bias=False), nn.BatchNorm1d(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.depthwise(self.expand(x)))


class ResNet1D(nn.Module):
    """Stem conv, residual blocks with 2x downsampling between them, LayerNorm + linear head.

    Input ``[N, length]`` or ``[N, in_ch, length]``; output ``[N, n_classes]`` logits.
    """

    def __init__(
        self,
        in_ch: int,
        length: int,
        n_classes: int,
        width: int = 64,
        blocks: int = 3,
        expansion: int = 2,
        kernel: int = 5,
    ):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(in_ch, width, kernel, padding=kernel // 2, bias=False), nn.BatchNorm1d(width), nn.GELU()
        )
        layers: list[nn.Module] = []
        for i in range(blocks):
            layers.append(Block(width, width * expansion, kernel))
            if i < blocks - 1:
                layers.append(nn.MaxPool1d(2))
        self.blocks = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_classes)
        self.length = length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        y = self.blocks(self.stem(x)).mean(dim=2)
        return self.head(self.norm(y))
