"""What to run: the one config loader (compose), the structured configs (schema), the pipeline
spec and its validation (spec, graph, select, targets). Nothing here starts Ray or writes MLflow."""
