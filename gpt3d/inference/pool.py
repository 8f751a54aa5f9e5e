"""A pool of tp x pp engine ranks that serves calls from a driver process (the lm-evaluation-harness backend, the
benchmarks): the ranks are spawned once, load the checkpoint, and then run each submitted call (`generate` or
`score` with its arguments) together; rank 0 returns the result. With one rank the engine lives in the driver."""
from __future__ import annotations

import datetime
import os
import traceback
from typing import Any, Optional

import torch


def _serve(rank: int, world_size: int, port: int, load_kwargs: dict, inbox, outbox) -> None:
    import torch.distributed as dist

    from gpt3d.parallel.context import Layout, ParallelContext

    from .engine import InferenceEngine
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=3600))
    try:
        kw = dict(load_kwargs)
        ctx = ParallelContext(Layout(kw.pop("tp"), kw.pop("pp"), 1), rank, torch.device("cpu"))
        engine = InferenceEngine.load(ctx=ctx, **kw)
        if rank == 0:
            outbox.put(("ready", None))
        while True:
            call = inbox.get()
            if call is None:
                break
            method, args, kwargs = call
            result = getattr(engine, method)(*args, **kwargs)
            if rank == 0:
                outbox.put(("ok", result))
    except BaseException:
        outbox.put(("error", f"rank {rank}:\n{traceback.format_exc()}"))
        raise
    finally:
        from gpt3d.launch.spawn import leave_job
        leave_job()


class EnginePool:
    def __init__(self, checkpoint: str, source: str = "gpt3d", tp: int = 1, pp: int = 1,
                 dtype: torch.dtype = torch.float32, micro_batches: Optional[int] = None):
        kwargs = {"path": checkpoint, "source": source, "dtype": dtype, "micro_batches": micro_batches}
        self.world = tp * pp
        self.engine = None
        if self.world == 1:
            from .engine import InferenceEngine
            self.engine = InferenceEngine.load(**kwargs)
            return
        import torch.multiprocessing as mp

        from gpt3d.launch.spawn import free_port
        mp_ctx = mp.get_context("spawn")
        self.inboxes = [mp_ctx.Queue() for _ in range(self.world)]
        self.outbox = mp_ctx.Queue()
        port = free_port()
        self.procs = [mp_ctx.Process(target=_serve, args=(r, self.world, port, {**kwargs, "tp": tp, "pp": pp},
                                                          self.inboxes[r], self.outbox), daemon=True)
                      for r in range(self.world)]
        for p in self.procs:
            p.start()
        self._reply()

    def _reply(self) -> Any:
        status, value = self.outbox.get()
        if status == "error":
            self.close()
            raise RuntimeError(f"an engine rank failed: {value}")
        return value

    def call(self, method: str, *args, **kwargs) -> Any:
        if self.engine is not None:
            return getattr(self.engine, method)(*args, **kwargs)
        for box in self.inboxes:
            box.put((method, args, kwargs))
        return self._reply()

    def close(self) -> None:
        if self.engine is not None:
            return
        for box in self.inboxes:
            box.put(None)
        for p in self.procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
