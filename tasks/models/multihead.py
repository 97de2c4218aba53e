"""A model with one output head per task (a multi-task student): the trunk is a zoo model whose
output layer holds every head side by side."""

from __future__ import annotations

import torch
from torch import nn

from tasks.core.options import LabelMap
from tasks.models.build import build_model

MULTIHEAD = "tasks.models.multihead.MultiHead"


def head_classes(label: str, num_classes: int) -> int:
    """Number of classes of the task ``label`` over data with ``num_classes`` classes."""
    return num_classes if label == LabelMap.identity else 2


def derive_labels(y: torch.Tensor, label: str) -> torch.Tensor:
    """The task's labels from class labels ``y``; -1 (unlabeled) stays -1."""
    if label == LabelMap.identity:
        return y
    if label == LabelMap.parity:
        out = y % 2
    elif label == LabelMap.gt4:
        out = (y > 4).long()
    else:
        raise ValueError(f"labels: unknown value '{label}' ({' | '.join(m.value for m in LabelMap)})")
    return torch.where(y >= 0, out, y)


class MultiHead(nn.Module):
    """A zoo model (``trunk``) whose output layer holds one head per task in ``heads`` (LabelMap values).

    Training mode returns every head's logits side by side; eval mode returns head 0's (the data's
    own classes), so export and benchmark see a plain classifier. ``forward_all`` gives each head.
    """

    def __init__(self, input_shape: list[int], num_classes: int, trunk: dict, heads: list[str]):
        super().__init__()
        self.heads = [str(h) for h in heads]
        self.sizes = [head_classes(h, num_classes) for h in self.heads]
        arch = {**dict(trunk), "input_shape": list(input_shape), "num_classes": sum(self.sizes)}
        self.trunk = build_model(arch)  # the model zoo only: this class is what the config trusts

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(self.trunk(x), self.sizes, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.trunk(x)
        return out if self.training else out[:, : self.sizes[0]]


@torch.no_grad()
def head_accuracies(net: MultiHead, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy of every head on its derived labels of ``y``."""
    net.eval()
    outs = net.forward_all(x)
    return {h: float((o.argmax(1) == derive_labels(y, h)).float().mean()) for h, o in zip(net.heads, outs)}
