"""`imesh bench`: the mesh's own cost, measured against a zero-delay upstream in the same run."""
