"""The model zoo: small architectures whose per-layer widths are explicit lists, so a
structurally pruned model is the same constructor with smaller widths and reloads without pickle."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU]* -> Linear."""

    def __init__(self, input_shape: list[int], num_classes: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        dims = [int(torch.tensor(input_shape).prod())] + list(hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class CNN1D(nn.Module):
    """1-D CNN in the style of the MNIST-1D paper: Conv1d(+BN)+ReLU blocks, then a linear head.

    ``channels`` lists each conv layer's width; ``stride`` downsamples every layer but the first.
    Input ``[N, L]`` or ``[N, C, L]``.
    """

    def __init__(
        self,
        input_shape: list[int],
        num_classes: int,
        channels: Sequence[int] = (32, 32, 32),
        kernel_size: int = 5,
        stride: int = 2,
        batch_norm: bool = True,
    ):
        super().__init__()
        shape = list(input_shape)
        in_ch, length = (1, shape[0]) if len(shape) == 1 else (shape[0], shape[1])
        layers: list[nn.Module] = []
        for i, ch in enumerate(channels):
            s = 1 if i == 0 else stride
            layers.append(nn.Conv1d(in_ch, ch, kernel_size, stride=s, padding=kernel_size // 2))
            if batch_norm:
                layers.append(nn.BatchNorm1d(ch))
            layers.append(nn.ReLU())
            length = (length + 2 * (kernel_size // 2) - kernel_size) // s + 1
            in_ch = ch
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_ch * length, num_classes)

    def forward(self, x):
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.head(self.features(x).flatten(1))


class ResBlock2D(nn.Module):
    def __init__(self, ch: int, mid: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, mid, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class ResCNN2D(nn.Module):
    """Small residual CNN for 2-D images ``[N, C, H, W]`` (or ``[N, H, W]``).

    ``stem`` is the stem width, ``mids`` the inner width of each residual block (prunable).
    """

    def __init__(self, input_shape: list[int], num_classes: int, stem: int = 32, mids: Sequence[int] = (32, 32)):
        super().__init__()
        in_ch = 1 if len(input_shape) == 2 else input_shape[0]
        self.stem = nn.Sequential(nn.Conv2d(in_ch, stem, 3, padding=1, bias=False), nn.BatchNorm2d(stem), nn.ReLU())
        self.blocks = nn.Sequential(*[ResBlock2D(stem, m) for m in mids])
        self.head = nn.Linear(stem, num_classes)

    def forward(self, x):
        if x.dim() == 3:
            x = x.unsqueeze(1)
        y = self.blocks(self.stem(x))
        return self.head(y.mean(dim=(2, 3)))
