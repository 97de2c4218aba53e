"""slimray's engine: how a pipeline of compression steps is configured, validated, executed on
Ray and tracked in MLflow. Start with ``pipelines.api`` (load_config, validate, execute); the
``slimray`` command (``pipelines.cli``) parses arguments and calls it. Rooms: ``config/``,
``run/``, ``store/``, ``scale/``, ``search/``."""
