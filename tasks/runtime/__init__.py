"""Runtimes and measurement: ONNX export and ONNX Runtime sessions, the one timer for torch and
ONNX Runtime, and the benchmark's measurements."""
