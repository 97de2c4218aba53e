"""What a step asks the engine to put on the pipeline's parent run and in the model registry."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Registration:
    """A model a step wants in the model registry: ``name@alias`` pointing at these ONNX bytes, or
    (``onnx`` empty) at ``files`` alone: a causal LM's graph or weights with its tokenizer and
    generation config (``tasks.llm.served.lm_files``)."""

    name: str
    onnx: bytes
    alias: str = "candidate"
    source: str = ""  # the registered model's own name (a benchmark row, a ModelCard): what the version is
    files: dict[str, bytes] = field(default_factory=dict)  # stored with the version (tasks.serving.model)
    runtime: str = "onnxruntime"  # the runtime it was selected for (model version tag slimray.runtime)
    kind: str = ""  # what serves it (model version tag slimray.kind): "" a classifier/embedder, "causal_lm"


@dataclass
class Publication:
    """What a step wants shown on the pipeline's parent run.

    Tasks never write to a run other than their own: they return this inside their output
    (``Report.publish``) and the engine publishes it on the parent run, on the computed path
    and on the cache-hit path alike.
    """

    files: dict[str, bytes] = field(default_factory=dict)  # artifacts of the parent run
    metrics: dict[str, float] = field(default_factory=dict)  # headline metrics of the parent run
    description: str = ""  # Markdown: the parent run's description
    console: str = ""  # text shown after the step table
    models: list[Registration] = field(default_factory=list)
    candidates: list[dict] = field(default_factory=list)  # every measured model: {name, metrics, params}
    tags: dict[str, str] = field(default_factory=dict)  # tags of the parent run
