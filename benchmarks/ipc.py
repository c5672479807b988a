"""What crossing a process boundary costs per engine step (docs/scaling.md).

Times, for realistic step messages, pickling alone and a full round trip over a
``multiprocessing`` pipe to a spawned process that unpickles the message and
sends a reply back (the ``mp`` executor's and the engine-core process's
transport): a decode step of N running requests (``SchedulerOutput`` to the
ranks, ``ModelRunnerOutput`` back), a step that admits N new 512-token prompts,
and the ``EngineCoreOutput`` list a core process returns.

    python benchmarks/ipc.py --batch-sizes 1 32 256
"""

from __future__ import annotations

import argparse
import multiprocessing
import pickle
import statistics
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from folo_core.sampling_params import SamplingParams
from folo_core.sched.output import (CachedRequestData, EngineCoreOutput, ModelRunnerOutput, NewRequestData,
                                    SchedulerOutput)


def decode_step(n: int) -> tuple[SchedulerOutput, ModelRunnerOutput]:
    ids = [f"req-{i}" for i in range(n)]
    out = SchedulerOutput([], [CachedRequestData(r, [1000 + i], 300, 20) for i, r in enumerate(ids)],
                          {r: 1 for r in ids}, n)
    return out, ModelRunnerOutput({r: [42] for r in ids})


def prefill_step(n: int, prompt_len: int = 512) -> tuple[SchedulerOutput, ModelRunnerOutput]:
    ids = [f"req-{i}" for i in range(n)]
    params = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=128)
    new = [NewRequestData(r, list(range(prompt_len)), prompt_len, params, list(range(prompt_len // 16)), 0)
           for r in ids]
    return SchedulerOutput(new, [], {r: prompt_len for r in ids}, n * prompt_len), \
        ModelRunnerOutput({r: [42] for r in ids})


def core_outputs(n: int) -> list[EngineCoreOutput]:
    return [EngineCoreOutput(f"req-{i}", [42]) for i in range(n)]


def _echo(conn: Connection) -> None:
    while True:
        message = conn.recv()
        if message is None:
            return
        conn.send(message[1])


def _median_us(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_echo, args=(child,), daemon=True)
    process.start()
    print("| message | N | pickled bytes | pickle + unpickle (us) | pipe round trip (us) |")
    print("|---|---|---|---|---|")
    for n in args.batch_sizes:
        for label, (request, reply) in (("decode step", decode_step(n)), ("prefill step, 512-token prompts",
                                                                           prefill_step(min(n, 16)))):
            size = len(pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))
            codec = _median_us(lambda: pickle.loads(pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)),
                               args.repeats)

            def round_trip() -> None:
                parent.send((request, reply))
                parent.recv()

            rows = min(n, 16) if label.startswith("prefill") else n
            print(f"| {label} | {rows} | {size} | {codec:.0f} | {_median_us(round_trip, args.repeats):.0f} |")
        outputs = core_outputs(n)
        size = len(pickle.dumps(outputs, protocol=pickle.HIGHEST_PROTOCOL))
        codec = _median_us(lambda: pickle.loads(pickle.dumps(outputs, protocol=pickle.HIGHEST_PROTOCOL)),
                           args.repeats)
        print(f"| engine-core outputs | {n} | {size} | {codec:.0f} | - |")
    parent.send(None)
    process.join()


if __name__ == "__main__":
    main()
