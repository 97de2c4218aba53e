"""A transformer text classifier: a ``SentenceEncoder`` (mean pooling, not normalized) + a linear head.

Its ``arch`` is JSON like the encoder's (``config`` = the Hugging Face config dict, plus
``num_classes``), its forward takes the tokenizer's three tensors (or one stacked ``[B, 3, L]``
tensor) and returns logits, so the classification steps (``infer``, ``distill``, ``prune``,
``export``, ``quantize``, ``benchmark``) treat it like any zoo classifier. The encoder's keys are
those of ``SentenceEncoder`` (``encoder.encoder.layer.<i>...``), so ``layer_student`` makes a
shallower classifier from its layers, head included.
"""

from __future__ import annotations

from torch import Tensor, nn

from tasks.models.transformer import SentenceEncoder, encoder_arch


class TextClassifier(SentenceEncoder):
    """Encoder -> masked mean pooling -> dropout -> ``Linear(hidden, num_classes)``."""

    def __init__(self, config: dict, num_classes: int, dropout: float = 0.1, attn_implementation: str = "eager"):
        super().__init__(config, normalize=False, attn_implementation=attn_implementation)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(int(config["hidden_size"]), int(num_classes))

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None
    ) -> Tensor:
        return self.head(self.dropout(super().forward(input_ids, attention_mask, token_type_ids)))


TARGET = f"{TextClassifier.__module__}.{TextClassifier.__qualname__}"


def classifier_arch(config: dict, num_classes: int, dropout: float = 0.1) -> dict:
    """The ``arch`` of a ``TextClassifier`` (JSON): what ``tasks.models.build.build_model`` rebuilds."""
    clean = encoder_arch(config)["config"]
    return {"_target_": TARGET, "config": clean, "num_classes": int(num_classes), "dropout": float(dropout)}
