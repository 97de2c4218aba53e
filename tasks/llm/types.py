"""What the causal-language-model steps hand each other (experiment=llm): token ids and models.

Both are stored like every step output (``pipelines.store.artifacts``: tensors in safetensors, bytes
as files, the rest JSON) and listed in ``tasks.core.types.ARTIFACT_TYPES``. A model travels as its
Hugging Face config plus weights, or as the files of an exported graph, with its tokenizer's files
(``save_pretrained`` output as bytes), so no step hands another a local path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class TokenSet:
    """Token ids made with one model's tokenizer: held-out documents (perplexity, agreement), calibration rows
    (block importance, data-aware quantization), distillation rows (teacher top-k logits) and chat
    prompts (greedy-generation agreement, time to first token).

    Documents are concatenated in ``eval_ids`` with their boundaries in ``eval_offsets``
    (``[docs + 1]``, starting at 0), prompts likewise, so ragged text stays two tensors.
    """

    name: str
    eval_ids: Tensor  # int64 [tokens]
    eval_offsets: Tensor  # int64 [docs + 1]
    calib: Tensor  # int64 [rows, seq_len]
    distill: Tensor  # int64 [rows, seq_len]
    prompt_ids: Tensor  # int64 [tokens]
    prompt_offsets: Tensor  # int64 [prompts + 1]
    meta: dict = field(default_factory=dict)  # source packages, files per split, seq_len, the tokenizer's digest

    def docs(self) -> list[list[int]]:
        """The held-out documents as token lists."""
        return _split(self.eval_ids, self.eval_offsets)

    def prompts(self) -> list[list[int]]:
        """The chat prompts, rendered with the tokenizer's chat template, as token lists."""
        return _split(self.prompt_ids, self.prompt_offsets)


def _split(ids: Tensor, offsets: Tensor) -> list[list[int]]:
    flat, cut = ids.tolist(), offsets.tolist()
    return [flat[a:b] for a, b in zip(cut[:-1], cut[1:])]


@dataclass
class CausalLM:
    """A causal language model: its Hugging Face ``config`` (rebuilds the architecture) and either
    torch weights (``format="torch"``; a tied LM head is not stored twice) or the files of an
    exported graph with a KV cache (``"onnx"``: ``model.onnx``; ``"openvino"``: ``model.xml`` and
    ``model.bin``). Every variant carries its tokenizer's files (``save_pretrained`` output, chat
    template included), so the registered one serves text on its own. ``metrics`` carries what the
    producing step measured (kept layers, compression, a learning curve); ``parent`` names the
    variant it was made from."""

    name: str
    config: dict
    format: str = "torch"
    state_dict: dict[str, Tensor] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    tokenizer: dict[str, bytes] = field(default_factory=dict)  # file name -> bytes
    parent: str | None = None
    metrics: dict = field(default_factory=dict)
