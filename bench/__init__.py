"""`imesh bench`: the mesh's own cost beside a zero baseline, the floors of a Python hop and
LiteLLM, measured in one run; and the upstream HTTP client chosen by the same harness."""
