"""The spend ledger through a Redis killed under gateway processes: what it keeps, what escapes.

Runs the two scenarios of tests/support/ledger_outage.py and prints their figures:
  refused   one replica spends a daily budget, another is only refused; Redis is SIGKILLed and
            both take misses: spend during the outage against 2 x what remained
  writeback a persistent (appendonly) Redis holding cache and ledger is SIGKILLed for --outage
            seconds under 16 clients of misses through two replicas, then restarted: the
            ledger's tokens against the tokens the emulator billed

    .venv/bin/python bench/ledger_outage.py                       # this tree
    .venv/bin/python bench/ledger_outage.py --tree /tmp/base      # the gateways of another checkout
        (git archive <commit> | tar -x -C /tmp/base; the emulator always runs from this tree)

About 30 s. Nothing here asserts: tests/test_budget_processes.py holds the bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from tests.support.ledger_outage import (
    refused_replicas_through_an_outage,
    write_back_through_an_outage,
)
from tests.support.processes import REPO


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=REPO, help="source tree the gateways run from")
    parser.add_argument("--outage", type=float, default=4.0, help="seconds Redis stays dead in the write-back run")
    parser.add_argument("--only", choices=("refused", "writeback"))
    args = parser.parse_args()
    print(f"gateways from {args.tree}")
    if args.only in (None, "refused"):
        with tempfile.TemporaryDirectory() as workdir:
            refused = await refused_replicas_through_an_outage(Path(workdir), tree=args.tree)
        print(f"refused:   {refused.summary()}")
    if args.only in (None, "writeback"):
        with tempfile.TemporaryDirectory() as workdir:
            written = await write_back_through_an_outage(Path(workdir), tree=args.tree, outage_seconds=args.outage)
        print(f"writeback: {written.summary()}")


if __name__ == "__main__":
    asyncio.run(main())
