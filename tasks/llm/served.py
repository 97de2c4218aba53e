"""A registered causal language model as files, and those files as a model ready to serve.

``lm_files`` is what the registry keeps of a selected variant: its graph (``model.onnx``; or
``model.xml`` + ``model.bin``; or, for format ``torch``, ``model.safetensors`` + ``config.json`` as
``save_pretrained`` writes them), its tokenizer's ``save_pretrained`` files (chat template
included), ``generation_config.json`` (the eos ids that end a generation) and ``slimray_lm.json``
(name, format, the Hugging Face config and the context length). So a registered version is a plain
folder that ``transformers`` can read too, and nothing else is needed to serve it.

``load_served`` reads that folder back into a ``ServedLM``: a ``tasks.llm.decoder`` Decoder on the
chosen runtime (through ``tasks.llm.bench.open_decoder``), the tokenizer, the eos ids and the
context, which is what the OpenAI-compatible deployment (``tasks.serving.llm_deployment``) needs.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.llm.types import CausalLM

META_FILE = "slimray_lm.json"
GENERATION_FILE = "generation_config.json"
TORCH_FILES = ("model.safetensors", "config.json")
GRAPH_FILES = {"onnx": ("model.onnx",), "openvino": ("model.xml", "model.bin"), "torch": TORCH_FILES}


@dataclass
class ServedLM:
    """A causal LM ready to generate: ``decoder`` (prefill / step) on ``runtime``, its tokenizer, the token
    ids that end a generation, the longest prompt + answer in tokens, and the chat template (None: no chat)."""

    name: str
    runtime: str
    decoder: Any
    tokenizer: Any
    eos_ids: list[int]
    context: int
    chat_template: str | None
    note: str = ""  # why its files were not verified, when they could not be (pipelines.scale.serve_app)


def _context_of(config: dict) -> int:
    context = config.get("max_position_embeddings")
    if not isinstance(context, int) or context <= 0:
        raise ValueError(f"config.max_position_embeddings: {context!r} is not a positive context length")
    return context


def _eos_ids(config: dict, tokenizer: Any) -> list[int]:
    """The config's eos id(s) and the tokenizer's eos token, in that order, without repeats."""
    given = config.get("eos_token_id")
    ids = [given] if isinstance(given, int) else list(given or [])
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return list(dict.fromkeys(int(i) for i in ids))


def _torch_files(model: CausalLM) -> dict[str, bytes]:
    """``model.safetensors`` + ``config.json`` exactly as ``save_pretrained`` writes them."""
    from tasks.llm.model import build_causal_lm, load_lm_state

    net = load_lm_state(build_causal_lm(model.config), model.state_dict)
    with tempfile.TemporaryDirectory() as tmp:
        net.save_pretrained(tmp)
        return {name: (Path(tmp) / name).read_bytes() for name in TORCH_FILES}


def lm_files(model: CausalLM) -> dict[str, bytes]:
    """The files a registered version of ``model`` holds (see the module docstring), by file name."""
    from tasks.llm.model import tokenizer_from_files

    if model.format not in GRAPH_FILES:
        raise ValueError(f"format: {model.format!r} is not one of {sorted(GRAPH_FILES)}")
    if model.format == "torch":
        graph = _torch_files(model)
    else:
        missing = [n for n in GRAPH_FILES[model.format] if n not in model.files]
        if missing:
            raise ValueError(f"files: {model.format} model '{model.name}' lacks {missing[0]}")
        graph = {n: model.files[n] for n in GRAPH_FILES[model.format]}
    clash = sorted(set(model.tokenizer) & (set(graph) | {META_FILE, GENERATION_FILE}))
    if clash:
        raise ValueError(f"tokenizer: its file {clash[0]} has the name of a model file")
    eos = _eos_ids(model.config, tokenizer_from_files(model.tokenizer))
    generation = {"eos_token_id": eos, "pad_token_id": model.config.get("pad_token_id"), "do_sample": False}
    meta = {"name": model.name, "format": model.format, "config": model.config, "context": _context_of(model.config)}
    return {
        **graph,
        **model.tokenizer,
        GENERATION_FILE: json.dumps(generation, indent=2).encode(),
        META_FILE: json.dumps(meta, indent=2).encode(),
    }


def _read_json(folder: Path, name: str) -> dict:
    try:
        doc = json.loads((folder / name).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{folder / name}: not a readable JSON file ({type(e).__name__})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{folder / name}: not a JSON object")
    return doc


def _model_of(folder: Path, meta: dict, tokenizer: dict[str, bytes]) -> CausalLM:
    """The ``CausalLM`` the folder holds (the torch weights as tensors, a graph as bytes)."""
    fmt, config = meta.get("format"), meta.get("config")
    if fmt not in GRAPH_FILES or not isinstance(config, dict):
        raise ValueError(f"{folder / META_FILE}: format {fmt!r} or its config is not valid")
    name = str(meta.get("name", folder.name))
    if fmt != "torch":
        files = {n: (folder / n).read_bytes() for n in GRAPH_FILES[fmt]}
        return CausalLM(name=name, config=config, format=fmt, files=files, tokenizer=tokenizer)
    from safetensors.torch import load_file

    return CausalLM(name=name, config=config, state_dict=load_file(str(folder / TORCH_FILES[0])), tokenizer=tokenizer)


def load_served(folder: Path, runtime: str, threads: int) -> ServedLM:
    """The model that ``lm_files`` wrote into ``folder``, ready to generate on ``runtime`` with ``threads``."""
    from tasks.llm.bench import open_decoder
    from tasks.llm.model import tokenizer_from_files

    folder = Path(folder)
    for name in (META_FILE, GENERATION_FILE):
        if not (folder / name).is_file():
            raise ValueError(f"{folder}: no {name} (not a folder written from lm_files)")
    meta = _read_json(folder, META_FILE)
    for name in GRAPH_FILES.get(meta.get("format", ""), ()):
        if not (folder / name).is_file():
            raise ValueError(f"{folder}: no {name} (the {meta['format']} model's graph)")
    skip = {META_FILE, GENERATION_FILE, *GRAPH_FILES.get(meta.get("format", ""), ())}
    tokenizer_bytes = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name not in skip}
    if not tokenizer_bytes:
        raise ValueError(f"{folder}: no tokenizer files")
    model = _model_of(folder, meta, tokenizer_bytes)
    tokenizer = tokenizer_from_files(tokenizer_bytes)
    eos = _read_json(folder, GENERATION_FILE).get("eos_token_id")
    eos_ids = [eos] if isinstance(eos, int) else eos
    if not isinstance(eos_ids, list) or not eos_ids or not all(isinstance(i, int) for i in eos_ids):
        raise ValueError(f"{folder / GENERATION_FILE}: eos_token_id {eos!r} is not a token id or a list of them")
    return ServedLM(
        name=model.name,
        runtime=runtime,
        decoder=open_decoder(model, runtime, threads),
        tokenizer=tokenizer,
        eos_ids=eos_ids,
        context=_context_of(model.config),
        chat_template=getattr(tokenizer, "chat_template", None) or None,
    )
