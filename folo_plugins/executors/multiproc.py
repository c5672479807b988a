"""``mp``: one worker process per tensor-parallel rank (vLLM's ``MultiprocExecutor``).

Every rank runs in a process of its own, forked from Folo's fork server
(``folo_core/processes.py``); the engine's process never joins the process
group, so it can build and drop engines freely. Each rank joins
a torch.distributed group (gloo on CPU, nccl on CUDA) over a TCP rendezvous on
127.0.0.1, builds its ``ModelRunner`` over its shard of the model, and then
serves calls from the engine over a pipe. A call goes to every rank (each
step's ``SchedulerOutput`` pickled once per rank); the ranks run it together
(their layers meet in all-reduces) and rank 0's result comes back. Every rank
samples from the same gathered logits with the same seeds, so their batches
stay identical without sending tokens back. A worker that dies or raises fails
the call with its error; the engine core turns that into failed requests.
"""

from __future__ import annotations

import weakref
from multiprocessing.connection import Connection
from typing import Any

from folo_core.executor.abstract import WorkerSpec
from folo_core.logger import init_logger
from folo_core.processes import caller_state, process_context, restore_caller_state
from folo_core.quantization import WeightMemory
from folo_core.registry import SelectionContext
from folo_plugins.executors.worker import RankExecutor, dist_backend, free_port, gather_replies, start_worker

logger = init_logger(__name__)

_STOP = "stop"


def _worker_main(spec: WorkerSpec, rank: int, world_size: int, init_method: str, backend: str,
                 conn: Connection, caller: dict[str, Any]) -> None:
    """A rank's process: build its ``TPWorker``, then run each call the engine sends."""
    restore_caller_state(caller)
    worker, reply = start_worker(spec, rank, world_size, init_method, backend)
    conn.send(reply)
    if worker is None:
        return
    while True:
        try:
            call = conn.recv()
        except EOFError:  # the engine went away
            return
        if call == _STOP:
            return
        conn.send(worker.call(*call))


def _stop_workers(workers: list[tuple[Any, Connection]]) -> None:
    for process, conn in workers:
        try:
            conn.send(_STOP)
        except (OSError, ValueError):
            pass
    for process, _ in workers:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()


class MultiprocExecutor(RankExecutor):
    def __init__(self, spec: WorkerSpec) -> None:
        super().__init__(spec)
        config = spec.config
        self.world_size = config.parallel.tensor_parallel_size
        backend = dist_backend(config)
        init_method = f"tcp://127.0.0.1:{free_port()}"
        context = process_context()
        self.workers: list[tuple[Any, Connection]] = []
        for rank in range(self.world_size):
            parent, child = context.Pipe()
            process = context.Process(target=_worker_main, name=f"folo-tp-rank{rank}", daemon=True,
                                      args=(spec, rank, self.world_size, init_method, backend, child,
                                            caller_state()))
            process.start()
            child.close()
            self.workers.append((process, parent))
        self._finalizer = weakref.finalize(self, _stop_workers, self.workers)
        logger.info("mp executor: %d ranks (%s, %s)", self.world_size, backend, init_method)
        self._weight_memory: WeightMemory = self._gather()[0]

    @classmethod
    def check_eligibility(cls, ctx: SelectionContext) -> list[str]:
        size = ctx.options.get("tensor_parallel_size", 1)
        return [] if size > 1 else ["tensor_parallel_size is 1 (uni serves it)"]

    def _gather(self) -> list[Any]:
        """Every rank's reply to the last call, in rank order; raises the errors."""
        replies = []
        for rank, (process, conn) in enumerate(self.workers):
            try:
                replies.append(conn.recv())
            except (EOFError, OSError):
                replies.append(("error", f"rank {rank} died (exit code {process.exitcode})"))
        return gather_replies(replies)

    def _call(self, name: str, *args: Any) -> list[Any]:
        for rank, (process, conn) in enumerate(self.workers):
            try:
                conn.send((name, args))
            except (OSError, ValueError):
                raise RuntimeError(f"rank {rank} is gone (exit code {process.exitcode})") from None
        return self._gather()

    def shutdown(self) -> None:
        self._finalizer()
