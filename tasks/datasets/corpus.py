"""An offline text corpus built from the docstrings and comments of installed Python packages.

Nobody here wrote this text, nothing is downloaded, and its content is fixed by the package
versions pinned in ``constraints.txt`` (not by the Python version, which changes the standard
library): the packages are read from site-packages as source files, never imported.

Construction, for a list of packages (top-level import names, e.g. ``numpy``, ``sklearn``):

1. **Files**: every ``.py`` file under the package's directory, sorted, skipping test folders
   (``tests``, ``test``, ``testing``) and vendored code (``_vendor``, ``vendored``, ``externals``).
2. **Texts** of one file: each docstring (module, class, function; ``ast``) split into paragraphs,
   and each block of consecutive ``#`` comment lines (``tokenize``), whitespace collapsed. Units
   of ``min_words``..``max_words`` words that are mostly letters (>= 60% of non-space
   characters) and not code (no ``>>>``, ``::``, ``=``, brackets, backticks...) are kept; longer
   units are cut at sentence ends into pieces of at most ``max_words`` words.
3. **Deduplication**: a text is identified by its letters and digits, lowercased; the first
   occurrence in (package, file) order is kept, every later copy dropped - so no text appears
   twice anywhere in the corpus, within or across splits.
4. **Split by source file**: each package's files are shuffled with ``seed`` and cut into
   test / validation / calibration / training shares of ``test_frac`` / ``val_frac`` /
   ``calib_frac`` / the rest; every text of a file goes where its file goes, so near-duplicates
   inside one file (an overloaded method's docstrings, a repeated comment) cannot leak between
   splits. ``max_per_label`` caps each label's texts per split (seeded choice).
5. **Labels**: the package's index in the list (``textcls``: which package wrote this?).

``build_corpus`` returns ``Corpus``: the texts, labels and source files of each split and a
``digest`` (SHA-256 of every split's texts, labels and files): the same packages, versions,
settings and seed always give the same digest.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import io
import random
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val", "test", "calib")
SKIP_DIRS = {"tests", "test", "testing", "_vendor", "vendored", "externals", "__pycache__"}
_CODE = re.compile(r">>>|::|[{}\[\]=<>_\\|`*#@$]|\w\(|https?:")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


@dataclass
class CorpusConfig:
    packages: list[str]
    seed: int = 0
    min_words: int = 5
    max_words: int = 48
    test_frac: float = 0.15
    val_frac: float = 0.1
    calib_frac: float = 0.05
    max_per_label: int = 0  # cap on each label's texts per split (0 = no cap)


@dataclass
class Split:
    texts: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # "<package>/<relative path>" of each text


@dataclass
class Corpus:
    packages: list[str]
    splits: dict[str, Split]
    digest: str


def package_root(name: str) -> Path:
    """The directory of an installed package, or the file of a one-module distribution
    (``threadpoolctl.py``), located without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec is not None and spec.origin and spec.origin.endswith(".py"):
        return Path(spec.origin)
    raise ValueError(f"corpus.packages: '{name}' is not an installed package or Python module in site-packages")


def source_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*.py") if not SKIP_DIRS & set(p.relative_to(root).parts[:-1]))


def _comment_blocks(source: str) -> Iterator[str]:
    """Consecutive ``#`` comment lines of ``source`` joined into one text each."""
    block: list[str] = []
    last = -2
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type != tokenize.COMMENT:
                continue
            if tok.start[0] != last + 1 and block:
                yield " ".join(block)
                block = []
            block.append(tok.string.lstrip("#").strip())
            last = tok.start[0]
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass
    if block:
        yield " ".join(block)


def _docstring_paragraphs(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield from re.split(r"\n\s*\n", doc)


def _pieces(text: str, max_words: int) -> Iterator[str]:
    """``text`` whole, or cut at sentence ends into pieces of at most ``max_words`` words."""
    if len(text.split()) <= max_words:
        yield text
        return
    piece: list[str] = []
    for sent in _SENTENCE_END.split(text):
        if piece and len(" ".join(piece + [sent]).split()) > max_words:
            yield " ".join(piece)
            piece = []
        piece.append(sent)
    if piece:
        yield " ".join(piece)


def _prose(text: str, cfg: CorpusConfig) -> bool:
    letters = sum(c.isalpha() for c in text)
    n = len(text.split())
    mostly_letters = letters >= 0.6 * len(text.replace(" ", ""))
    return cfg.min_words <= n <= cfg.max_words and not _CODE.search(text) and mostly_letters


def file_texts(path: Path, cfg: CorpusConfig) -> list[str]:
    """The prose units of one source file (docstring paragraphs, then comment blocks)."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
        return []
    units = list(_docstring_paragraphs(tree)) + list(_comment_blocks(source))
    out = []
    for unit in units:
        for piece in _pieces(" ".join(unit.split()), cfg.max_words):
            if _prose(piece, cfg):
                out.append(piece)
    return out


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _file_split(files: list[str], cfg: CorpusConfig, package: str) -> dict[str, str]:
    """Each file's split: the package's files shuffled with the seed and cut by the fractions."""
    order = sorted(files)
    random.Random(f"{cfg.seed}:{package}").shuffle(order)
    n = len(order)
    cuts = [("test", cfg.test_frac), ("val", cfg.val_frac), ("calib", cfg.calib_frac)]
    out, start = {}, 0
    for name, frac in cuts:
        stop = start + max(1, round(frac * n)) if n >= 4 else start
        out.update({f: name for f in order[start:stop]})
        start = stop
    out.update({f: "train" for f in order[start:]})
    return out


def _validate(cfg: CorpusConfig) -> None:
    if not cfg.packages or len(set(cfg.packages)) != len(cfg.packages):
        raise ValueError(f"corpus.packages: need >= 1 distinct package names, got {cfg.packages}")
    if cfg.min_words < 1 or cfg.max_words < cfg.min_words:
        raise ValueError(f"corpus.min_words/max_words: {cfg.min_words}/{cfg.max_words}")
    if min(cfg.test_frac, cfg.val_frac, cfg.calib_frac) < 0 or cfg.test_frac + cfg.val_frac + cfg.calib_frac >= 1:
        raise ValueError("corpus.test_frac + val_frac + calib_frac must be in [0, 1), each >= 0")


def package_files(package: str, cfg: CorpusConfig, seen: set[str]) -> Iterator[tuple[str, list[str]]]:
    """("<package>/<path>", the file's prose not seen before) for every source file of ``package``;
    ``seen`` collects the texts' keys, so the first copy in (package, file) order is kept."""
    root = package_root(package)
    for path in source_files(root):
        rel = f"{package}/{path.relative_to(root).as_posix() if root.is_dir() else path.name}"
        kept = []
        for text in file_texts(path, cfg):
            if _key(text) not in seen:
                seen.add(_key(text))
                kept.append(text)
        yield rel, kept


def build_corpus(cfg: CorpusConfig) -> Corpus:
    """The corpus of ``cfg.packages`` (see the module docstring): deterministic for a seed."""
    _validate(cfg)
    seen: set[str] = set()
    splits = {name: Split() for name in SPLITS}
    for label, package in enumerate(cfg.packages):
        per_file = {}
        for rel, kept in package_files(package, cfg, seen):
            if kept:
                per_file[rel] = kept
        where = _file_split(list(per_file), cfg, package)
        chosen: dict[str, list[tuple[str, str]]] = {name: [] for name in SPLITS}
        for rel in sorted(per_file):
            chosen[where[rel]] += [(t, rel) for t in per_file[rel]]
        for name, rows in chosen.items():
            if cfg.max_per_label and len(rows) > cfg.max_per_label:
                rows = random.Random(f"{cfg.seed}:{package}:{name}").sample(rows, cfg.max_per_label)
            splits[name].texts += [t for t, _ in rows]
            splits[name].files += [f for _, f in rows]
            splits[name].labels += [label] * len(rows)
    return Corpus(packages=list(cfg.packages), splits=splits, digest=_digest(splits))


def _digest(splits: dict[str, Split]) -> str:
    h = hashlib.sha256()
    for name in SPLITS:
        s = splits[name]
        for text, label, file in zip(s.texts, s.labels, s.files):
            h.update(f"{name}\t{label}\t{file}\t{text}\n".encode())
    return h.hexdigest()


# packages of the base + nlp install (versions pinned in constraints.txt) whose docstrings and comments
# make the sentence corpus for embedding distillation (text_data.packages: see conf/task/text_data/packages.yaml)
SENTENCE_PACKAGES = (
    "numpy scipy pandas sklearn matplotlib mlflow ray transformers onnx onnxruntime sqlalchemy optuna sympy "
    "networkx torch_pruning onnxscript alembic flask werkzeug jinja2 click rich pygments requests urllib3 "
    "aiohttp fastapi pydantic starlette uvicorn omegaconf hydra tokenizers huggingface_hub safetensors tqdm "
    "fsspec packaging yaml docker git google grpc opentelemetry cryptography attr jsonschema PIL kiwisolver "
    "fontTools contourpy joblib threadpoolctl markdown_it mdurl cloudpickle msgpack filelock"
).split()


def sentence_splits(packages: list[str], seed: int, min_words: int, max_words: int) -> dict[str, list[str]]:
    """Unlabeled sentences of ``packages`` for an embedding data set: ``build_corpus`` split by
    source file (test/val/calib/train), each split's texts in a seeded order. Packages that are
    not installed are skipped (the list names the usual install; the digest tells what was read)."""
    import importlib.util

    present = [p for p in packages if importlib.util.find_spec(p) is not None]
    cfg = CorpusConfig(packages=present, seed=seed, min_words=min_words, max_words=max_words)
    corpus = build_corpus(cfg)
    out = {}
    for name, split in corpus.splits.items():
        texts = list(split.texts)
        random.Random(f"{seed}:{name}").shuffle(texts)
        out[name] = texts
    return out
