"""The request-handling core of a served model, free of any server framework: request limits and
JSON checks (``limits``), the model and its routes (``model``). ``pipelines.scale.serve_app`` wraps
it in a Ray Serve deployment; nothing here imports Ray or MLflow."""
