"""A loaded Hugging Face model (``tasks.models.hf_load``) exported to ONNX with its own input names.

``export_onnx`` writes one graph input per tokenizer input (``input_ids``, ``attention_mask``,
``token_type_ids`` only when the tokenizer makes it), dynamic batch and sequence axes, and checks
the graph against torch with ONNX Runtime before returning it: an architecture that exports but
computes something else is refused here, not found later in a benchmark.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor

from tasks.models.hf_folder import first_line, position_limit
from tasks.models.hf_load import Stacked
from tasks.runtime.onnx import ort_feed, ort_session, output_name, to_onnx

TESTED_EXPORTS = ("bert", "distilbert", "roberta", "xlm-roberta", "deberta-v2", "mpnet")
"""Architectures whose export tests/test_hf_folder.py proves (torch vs ONNX Runtime)."""


class ExportUnsupported(ValueError):
    """An architecture that does not export to ONNX (or whose ONNX disagrees with torch)."""


def check_rows(wrapper: Stacked, batch: int, seq_len: int, seed: int = 0) -> Tensor:
    """``[batch, k, seq_len]`` stacked token rows for ``wrapper``: random ids, right padding with the
    model's pad id, random real lengths (the first row full), zero token types."""
    cfg = wrapper.config
    g = torch.Generator().manual_seed(seed)
    vocab = int(cfg.vocab_size)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, seq_len), generator=g)
    lengths = torch.randint(1, seq_len + 1, (batch,), generator=g)
    lengths[0] = seq_len
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    pad = int(getattr(cfg, "pad_token_id", 0) or 0)
    parts = {
        "input_ids": ids * mask + pad * (1 - mask),
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
    }
    return torch.stack([parts[n] for n in wrapper.input_names], dim=1)


def _restore_inputs(data: bytes, names: list[str]) -> bytes:
    """Give the graph every input in ``names`` order: the TorchScript exporter drops inputs the model
    ignores (DeBERTa-v3 reads no ``token_type_ids``), but a stacked batch feeds all of them."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load_from_string(data)
    have = {i.name: i for i in proto.graph.input}
    if [i.name for i in proto.graph.input] == names:
        return data
    ordered = [have.get(n) or helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in names]
    extra = [i for i in proto.graph.input if i.name not in names]  # never expected: keep them last
    del proto.graph.input[:]
    proto.graph.input.extend(ordered + extra)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(
    wrapper: Stacked, input_names: list[str], seq_len: int, dynamo: bool = True, atol: float = 1e-4
) -> bytes:
    """ONNX of ``wrapper`` (``Classifier`` -> ``logits``, ``Embedder`` -> ``sentence_embedding``) with the
    model's own input names and dynamic batch and sequence axes, traced at ``seq_len``.

    Checked before it is returned: ONNX Runtime and torch agree within ``atol`` (relative to the
    outputs' scale) on a batch of 3 at ``seq_len`` and a padded batch of 5 at a shorter length.
    ``dynamo=False`` uses the TorchScript exporter only (fast, deprecated); with ``dynamo=True``
    ``tasks.runtime.onnx.to_onnx`` falls back to it when ``torch.export`` cannot trace the model.
    """
    if list(input_names) != wrapper.input_names:
        raise ValueError(f"input_names {list(input_names)} differ from the wrapper's {wrapper.input_names}")
    cfg = wrapper.config
    limit = position_limit(cfg)
    if not 2 <= seq_len <= limit:
        raise ValueError(f"seq_len {seq_len}: must be in [2, {limit}] (the model's positions)")
    wrapper = wrapper.cpu().eval()
    unsupported = f"{cfg.model_type}: does not export to ONNX; tested: {', '.join(TESTED_EXPORTS)}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # tracer warnings about transformers' shape checks: the ORT check below decides
            data = to_onnx(
                wrapper, check_rows(wrapper, 2, seq_len), dynamo, list(input_names), output_name(wrapper.task)
            )
        data = _restore_inputs(data, list(input_names))
    except Exception as e:  # noqa: BLE001 - any exporter failure is this architecture's: say which
        raise ExportUnsupported(f"{unsupported} ({first_line(e)})") from None
    session = ort_session(data, threads=1)
    for batch, length, seed in ((3, seq_len, 1), (5, max(1, seq_len // 2), 2)):
        rows = check_rows(wrapper, batch, length, seed)
        with torch.no_grad():
            ref = wrapper(rows).numpy()
        out = session.run(None, ort_feed(session, rows))[0]
        diff = float(np.abs(out - ref).max()) if out.shape == ref.shape else float("inf")
        if not diff <= atol * max(1.0, float(np.abs(ref).max())):
            raise ExportUnsupported(
                f"{unsupported} (ONNX Runtime differs from torch by {diff:.3g} at batch {batch}, length {length})"
            )
    return data
