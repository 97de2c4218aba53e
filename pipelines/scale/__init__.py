"""Beyond one process: data-parallel replica pools and pipeline-parallel stage chains (``pool``),
the Ray Serve application for a registered model (``serve``, ``serve_config``, ``serve_app``)
and Ray Jobs on a cluster (``submit``)."""
