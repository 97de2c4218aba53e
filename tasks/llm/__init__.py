"""Causal language models: loading, text, quality, runtimes with a KV cache, weight-only quantization,
depth/width pruning and top-k distillation (experiment=llm). Pure library code: no Ray, no MLflow."""
