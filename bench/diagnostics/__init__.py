"""Where a benchmark's figure comes from: instruction counts, system calls, bytecodes, profiles, ablations."""
