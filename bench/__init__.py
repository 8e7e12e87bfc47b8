"""`imesh bench`: the mesh's own cost beside a zero baseline, the floors of a Python hop and
LiteLLM, measured in one run; and the upstream HTTP client chosen by the same harness.

The load generator (bench/load.py) calls the HTTP subjects over bench/http1.py, a minimal
HTTP/1.1 keep-alive client (an asyncio Protocol, httptools framing, each call shape's request
encoded once, one future per request), not httpx: httpx cost about 1 ms of client CPU per
request here, so at concurrency 32 the load generator's core, shared with the upstream,
saturated before the servers did and the RPS figures were the harness's (upstream direct 688
RPS, the minimal relay 539, while the relay needs about 0.42 ms of CPU per request). Each
measurement records what share of the run the load generator and the server process were
busy, on a CPU or ready to run (CPU plus run-queue wait, schedstat): the one near 100% set
the pace, whatever else runs on the machine. An RPS measured with the load generator 90% busy
or more is starred in LATEST.md, noted per scenario and named in the RPS target: it is a
floor for the subject's own throughput.
"""
