"""The request-handling core of a served model: request limits and JSON checks (``limits``), the
model and its routes (``model``), free of any server framework; the Ray Serve deployment around
them (``deployment``), used by ``slimray serve`` and by the benchmark's served measurement
(``load``), which import it inside functions. Nothing here imports MLflow."""
