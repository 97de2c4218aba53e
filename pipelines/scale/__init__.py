"""Scale-out rooms: data-parallel replicas, pipeline-parallel stage chains (``pool``) and the
Ray Serve application (``serve``)."""
