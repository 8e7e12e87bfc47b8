"""The router: admission, planning, the attempt loop, settlement."""
