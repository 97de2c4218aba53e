"""Weight-only INT8 / INT4 of an exported causal LM (``tasks.llm.export``): NNCF on OpenVINO, or
ONNX Runtime's ``MatMulNBits``. Activations stay FP32; only the stored weights shrink, which is what
speeds up decoding at batch 1, where every token reads every weight once (memory-bandwidth bound).

``nncf_weights``: the ONNX is read into an ``openvino.Model`` and ``nncf.compress_weights`` stores
each weight as integers with a scale (and zero point for ``_asym``) per output channel (INT8) or per
``group_size`` inputs (INT4), dequantized on the fly by OpenVINO's CPU kernels. Modes: ``int8``
(INT8_ASYM, NNCF's default), ``int8_sym``, ``int4`` (= ``int4_asym``, what optimum-intel's
``--weight-format int4`` picks) and ``int4_sym``. ``ratio`` < 1 keeps the least sensitive-ranked
share at the ``backup`` precision (NNCF's mixed precision). AWQ (Lin et al. 2024, activation-aware
scaling of salient channels) and scale estimation (NNCF's per-group scale fit minimizing the output
error) are data-aware: they run the model on ``calib`` token rows (prefill, empty past).

How NNCF 3.4 treats the embedding table and the LM head (measured on the test Llama,
``describe_compression``): INT8 compresses every weight, the embedding ``Gather`` table included
(per-row scales). INT4 keeps the embedding and the "last layer" at the backup precision (INT8_ASYM)
unless ``all_layers=True``, which makes every weight INT4 (the table in groups along the hidden axis,
which is also the head's reduction axis). With the head tied (it reads the embedding table through a
``Transpose``, ``tasks.llm.export.tie_lm_head``) the one shared table is compressed once, at the
embedding's INT8, and NNCF's "last layer" becomes the last block's ``down_proj`` (also INT8): 2 INT8
weights and 27 INT4 on the 4-layer model. Untied, the embedding and the head are two INT8 tables and
every block weight is INT4 (2 + 28). Tied is smaller by one vocab x hidden table (SmolLM2: 28 MB
at INT8), so the export stays tied.

``ort_int4``: ``tasks.compression.int4.int4_weights`` (ORT's RTN ``MatMulNBits`` quantizer) on the
untied graph, so the LM head's ``MatMul`` becomes 4-bit too; the embedding ``Gather`` stays FP32.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from tasks.compression.int4 import int4_weights
from tasks.llm.decoder import read_openvino
from tasks.llm.export import ONNX_FILE, empty_past, io_names, untie_lm_head

MODES = ("int8", "int8_asym", "int8_sym", "int4", "int4_asym", "int4_sym")
BACKUPS = ("int8_asym", "int8_sym", "none")


def files_size(files: dict[str, bytes]) -> int:
    """Bytes of all files of a model (the stored size)."""
    return sum(len(b) for b in files.values())


def _check(hidden: int, mode: str, group_size: int, ratio: float, backup: str, data_aware: bool, calib) -> None:
    """One-line errors for the compression settings (before any work is done)."""
    if mode not in MODES:
        raise ValueError(f"mode: '{mode}' (one of {MODES})")
    if backup not in BACKUPS:
        raise ValueError(f"backup: '{backup}' (one of {BACKUPS})")
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio: {ratio} (0 < ratio <= 1)")
    if mode.startswith("int4") and (group_size <= 0 or hidden % group_size):
        raise ValueError(f"group_size: {group_size} does not divide the hidden size {hidden} (e.g. 64 or 32 for 576)")
    if data_aware and not calib:
        raise ValueError("calib: awq / scale_estimation need calibration token rows (calib is empty)")


def _hidden_size(model: Any) -> int:
    """The model width: the embedding table's second dimension (the widest ``Gather`` table)."""
    tables = [op for op in model.get_ops() if op.get_type_name() == "Gather"]
    dims = [t.input_value(0).get_partial_shape() for t in tables]
    widths = [d[1].get_length() for d in dims if d.rank.is_static and d.rank.get_length() == 2 and d[1].is_static]
    if not widths:
        raise ValueError("files: the decoder graph has no embedding table (no 2-D Gather)")
    return max(widths)


def _dataset(model: Any, calib: list[np.ndarray]) -> Any:
    """An ``nncf.Dataset`` of prefill feeds: each calib row [1,T] with its mask, positions and empty past."""
    import nncf

    names = {n for i in model.inputs for n in i.get_names()}
    layers = sum(1 for n in names if n.startswith("past_key_values.") and n.endswith(".key"))
    shape = model.input("past_key_values.0.key").get_partial_shape()
    io = io_names(layers, shape[1].get_length(), shape[3].get_length())

    def feed(row: np.ndarray) -> dict[str, np.ndarray]:
        ids = np.asarray(row, np.int64).reshape(1, -1)
        seq = ids.shape[1]
        pos = np.arange(seq, dtype=np.int64)[None]
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": pos, **empty_past(io, 1)}

    return nncf.Dataset(list(calib), feed)


def _openvino_for_nncf(files: dict[str, bytes]) -> Any:
    """The ``openvino.Model`` to compress. From ONNX, every ``MatMul`` weight initializer ([in, out], as
    the exporter folds ``x @ W.T``) is stored [out, in] behind a ``Transpose`` and the graph converted
    with ``openvino.convert_model``, whose transformations fold it into ``MatMul(transpose_b=True)``:
    the layout NNCF's data-aware algorithms assume. On ``transpose_b=False`` NNCF 3.4's scale
    estimation fits the wrong axis (openvinotoolkit/nncf#3494): on SmolLM2 it took next-token
    agreement to 0.001; with this layout it matches the data-free result on the test Llama."""
    import onnx
    import openvino as ov
    from onnx import helper, numpy_helper

    if ONNX_FILE not in files:
        return read_openvino(files)
    model = onnx.load_from_string(files[ONNX_FILE])
    inits = {i.name: i for i in model.graph.initializer}
    for node in list(model.graph.node):
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if weight is not None and len(weight.dims) == 2:
            name = weight.name
            weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight).T.copy(), f"{name}.out_in"))
            model.graph.node.insert(0, helper.make_node("Transpose", [weight.name], [name], perm=[1, 0]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ONNX_FILE
        path.write_bytes(model.SerializeToString())
        return ov.convert_model(str(path))


def nncf_weights(
    files: dict[str, bytes],
    mode: str,
    group_size: int = 64,
    ratio: float = 1.0,
    awq: bool = False,
    scale_estimation: bool = False,
    calib: list[np.ndarray] | None = None,
    all_layers: bool = False,
    backup: str = "int8_asym",
) -> dict[str, bytes]:
    """OpenVINO IR ``{"model.xml", "model.bin"}`` with NNCF weight-only compression (module doc)."""
    import nncf
    import openvino as ov

    model = _openvino_for_nncf(files)
    data_aware = awq or scale_estimation
    _check(_hidden_size(model), mode, group_size, ratio, backup, data_aware, calib)
    name = {"int8": "int8_asym", "int4": "int4_asym"}.get(mode, mode)
    int4 = name.startswith("int4")
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)  # progress bars and per-layer tables at INFO
    try:
        model = nncf.compress_weights(
            model,
            mode=nncf.CompressWeightsMode(name),
            ratio=ratio if int4 else None,
            group_size=group_size if int4 else None,
            all_layers=all_layers if int4 else None,
            awq=awq if int4 else None,
            scale_estimation=scale_estimation if int4 else None,
            dataset=_dataset(model, calib) if data_aware and calib else None,
            subset_size=len(calib) if data_aware and calib else 128,
            backup_mode=nncf.BackupMode(backup) if int4 else None,
        )
    finally:
        logger.setLevel(level)
    with tempfile.TemporaryDirectory() as tmp:
        ov.save_model(model, str(Path(tmp) / "model.xml"), compress_to_fp16=False)
        return {n: (Path(tmp) / n).read_bytes() for n in ("model.xml", "model.bin")}


PASS_THROUGH = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose")


def _weight_of(node: Any) -> tuple[Any, list[Any]] | None:
    """The Constant a MatMul / Gather weight input comes from, through its decompression ops, and the
    constants on the way (scales, zero points); None for an activation (attention's Q.K, P.V)."""
    port = node.input_value(1 if node.get_type_name() == "MatMul" else 0)
    extra: list[Any] = []
    for _ in range(8):
        op = port.get_node()
        if op.get_type_name() == "Constant":
            return op, extra
        if op.get_type_name() not in PASS_THROUGH:
            return None
        extra += [v.get_node() for v in op.input_values()[1:] if v.get_node().get_type_name() == "Constant"]
        port = op.input_value(0)
    return None


def _nbytes(const: Any) -> int:
    return int(np.prod(const.get_output_shape(0), dtype=np.int64)) * const.get_output_element_type(0).bitwidth // 8


def _ir_weights(files: dict[str, bytes]) -> list[tuple[str, str, int, str]]:
    """(role, precision, bytes, constant id) of every weight read by OpenVINO, in graph order; role is
    ``embedding`` (a Gather table), ``linear`` or ``lm_head`` (the last MatMul with a weight)."""
    rows = []
    for op in read_openvino(files).get_ordered_ops():
        if op.get_type_name() not in ("MatMul", "Gather"):
            continue
        found = _weight_of(op)
        if found is None or len(found[0].get_output_shape(0)) < 2:
            continue
        const, extra = found
        role = "embedding" if op.get_type_name() == "Gather" else "linear"
        size = _nbytes(const) + sum(_nbytes(c) for c in extra)
        rows.append([role, const.get_output_element_type(0).get_type_name(), size, const.get_friendly_name()])
    heads = [r for r in rows if r[0] == "linear"]
    if heads:
        heads[-1][0] = "lm_head"
    return [(str(r[0]), str(r[1]), int(r[2]), str(r[3])) for r in rows]


def _onnx_weights(onnx_bytes: bytes) -> list[tuple[str, str, int, str]]:
    """``_ir_weights`` for an ONNX graph with ``MatMulNBits`` (which OpenVINO does not read)."""
    import onnx

    graph = onnx.load_from_string(onnx_bytes).graph
    inits = {i.name: i for i in graph.initializer}
    made = {o: n for n in graph.node for o in n.output}
    rows = []
    for node in graph.node:
        name = node.input[0] if node.op_type == "Gather" else node.input[1] if len(node.input) > 1 else ""
        if node.op_type == "Transpose" or name not in inits and name not in made:
            continue
        while name in made and made[name].op_type == "Transpose":
            name = made[name].input[0]
        if node.op_type not in ("MatMul", "Gather", "MatMulNBits") or name not in inits:
            continue
        parts = [inits[n] for n in node.input[1:] if n in inits] if node.op_type == "MatMulNBits" else [inits[name]]
        size = sum(len(p.raw_data) or onnx.numpy_helper.to_array(p).nbytes for p in parts)
        bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
        precision = (
            f"int{bits}"
            if node.op_type == "MatMulNBits"
            else onnx.helper.tensor_dtype_to_np_dtype(inits[name].data_type).name
        )
        rows.append(["embedding" if node.op_type == "Gather" else "linear", precision, size, name])
    heads = [r for r in rows if r[0] == "linear"]
    if heads:
        heads[-1][0] = "lm_head"
    return [(str(r[0]), str(r[1]), int(r[2]), str(r[3])) for r in rows]


def describe_compression(files: dict[str, bytes]) -> dict:
    """Weights per precision (count, bytes; a shared table counted once), the embedding's and the LM
    head's precision and whether they share one table (JSON-able)."""
    rows = _ir_weights(files) if "model.xml" in files else _onnx_weights(files[ONNX_FILE])
    count: Counter = Counter()
    size: Counter = Counter()
    seen: set[str] = set()
    for _, precision, nbytes, key in rows:
        if key not in seen:
            seen.add(key)
            count[precision] += 1
            size[precision] += nbytes
    role = {r[0]: r for r in rows}
    embedding, head = role.get("embedding"), role.get("lm_head")
    return {
        "weights": dict(count),
        "bytes": dict(size),
        "embedding": embedding[1] if embedding else None,
        "lm_head": head[1] if head else None,
        "tied": bool(embedding and head and embedding[3] == head[3]),
        "total_bytes": files_size(files),
    }


def ort_int4(files: dict[str, bytes], block_size: int = 32, accuracy_level: int = 4) -> dict[str, bytes]:
    """``{"model.onnx"}`` with every Linear weight, the LM head included, as 4-bit ``MatMulNBits`` blocks."""
    if ONNX_FILE not in files:
        raise ValueError(f"ort_int4: files {sorted(files)} have no {ONNX_FILE} (quantize an lm_export output)")
    untied = untie_lm_head(files[ONNX_FILE])
    return {ONNX_FILE: int4_weights(untied, block_size=block_size, accuracy_level=accuracy_level, symmetric=False)}
