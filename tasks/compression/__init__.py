"""Compression methods: unstructured sparsity, channel pruning (Torch-Pruning), k-bit quantizers,
ONNX Runtime INT8 quantization and quantization-aware training."""
