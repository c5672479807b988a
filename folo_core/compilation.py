"""The compiled forward: the whole decoder as one torch.compile (inductor) graph.

Eager PyTorch dispatches every norm, rotary and activation op from Python, one
at a time; inductor fuses them into a few C++ loops and calls them from one
generated wrapper. Attention stays behind the opaque ``folo::unified_attention``
op and CPU linears behind ``folo::mkldnn_linear``, so the graph never breaks.
The graph is dynamic in the number of tokens (one graph for any count, a single
token included), compiled once per process at start-up by a warm-up run;
inductor's on-disk cache makes later starts cheaper. Any failure to compile
falls back to eager with one warning. ``enforce_eager=True`` skips all of it.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn
from torch._dynamo.decorators import mark_unbacked

from folo_core.logger import init_logger

logger = init_logger(__name__)

_RECOMPILE_LIMIT = 64
ForwardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _any_token_count(forward: ForwardFn) -> ForwardFn:
    """``forward`` with the token dimension of its inputs marked unbacked, so dynamo builds one
    graph for every count, 1 included, not a second one specialised to a single token (which
    doubled tracing, about half of a warm start, for no faster step)."""

    def run(input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        mark_unbacked(input_ids, 0)
        mark_unbacked(positions, positions.dim() - 1)  # [T], or [2, T] under dynamic rope
        return forward(input_ids, positions)

    return run


class CompiledForward:
    """``model(input_ids, positions)`` through torch.compile once ``warm_up`` has succeeded."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._compiled: ForwardFn | None = None

    @property
    def active(self) -> bool:
        return self._compiled is not None

    def warm_up(self, run_batches: Callable[[ForwardFn], None]) -> bool:
        """Compile by running ``run_batches`` with the compiled forward; on any error, stay eager.

        ``run_batches(forward)`` runs the shapes the graph must cover (the caller
        owns the inputs and the forward context); the compiled function is used
        only if every one of them succeeds.
        """
        logger.info("compiling the model forward with torch.compile (once per process; "
                    "enforce_eager=True skips this)")
        start = time.perf_counter()
        # Dynamo keeps the graphs of every model instance of a class under one code object
        # (one per model shape); a process that builds
        # several engines must not run out of room.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, _RECOMPILE_LIMIT)
        # Fused loops otherwise keep bf16/fp16 intermediates in float32, where eager (and HF)
        # round each op's result: logits then differ by a bf16 step, enough to flip greedy picks.
        torch._inductor.config.emulate_precision_casts = True
        # Float attributes (a norm's eps) are constants: traced as symbolic floats, they reach
        # ops that need a number, and dynamo restarts the whole trace to specialise them (about
        # a third of start-up with a warm cache).
        torch._dynamo.config.specialize_float = True
        compiled = _any_token_count(torch.compile(self.model.forward, dynamic=True, fullgraph=True))
        try:
            run_batches(compiled)
        except Exception as exc:  # no C++ compiler, an op inductor cannot lower, ...
            logger.warning("torch.compile of the model failed (%s: %s); running eager",
                           type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            return False
        self._compiled = compiled
        logger.info("model forward compiled in %.1f s", time.perf_counter() - start)
        return True

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self._compiled is not None:
            # Dynamo's guards (a tensor check per parameter) cost about 1 ms a step. Warm-up has
            # compiled the graph this forward needs (any token count, one included), and nothing
            # the guards watch changes afterwards, so only the guards that tell it apart from
            # other engines' graphs of the same code are run.
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                return self._compiled(input_ids, positions)
        return self.model(input_ids, positions)
