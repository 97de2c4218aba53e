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
