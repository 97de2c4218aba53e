"""What outlives the process: cache keys, artifact codecs (safetensors + JSON, never pickle), MLflow
tracking, the recorder that publishes a run, the tracking preflight and the multirun comparison."""
