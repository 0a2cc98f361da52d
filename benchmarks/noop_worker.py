"""The no-op handler of benchmarks/workers.py: ``dagnats worker benchmarks/noop_worker.py``."""

import dagnats_nb as dn

TASK = "noop"
CONCURRENCY = 64


@dn.task(TASK, concurrency=CONCURRENCY)
async def noop(ctx):
    return ctx.input
