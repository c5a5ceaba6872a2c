"""rerank-gateway's benchmarks, run as one suite: `python -m bench --list`, `python -m bench run NAME`.

Words used throughout:

- a *benchmark* prints figures of the gateway at work and returns them by name (`Figures`);
  it never asserts a timing: machines are shared and noisy, so only ratios within one run compare.
- a *diagnostic* (`bench.diagnostics`) says where a benchmark's figure comes from: instruction
  counts, system calls, bytecodes, profiles, one part of a miss made a no-op at a time.
- the *registry* (`bench.registry`) lists both, one line each; `bench.cli` runs one of them and
  `bench.record` writes what it returned as JSON, with the commit, the machine and the libraries.
- *harness*, *workload*: the servers, load generator and request bodies every benchmark shares.
"""
