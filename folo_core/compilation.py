"""The compiled forward: the whole decoder as one torch.compile (inductor) graph, cached on disk.

Eager PyTorch dispatches every norm, rotary and activation op from Python, one
at a time; inductor fuses them into a few C++ loops and calls them from one
generated wrapper. Attention stays behind the opaque ``folo::unified_attention``
op and oneDNN-packed linears behind ``folo::mkldnn_linear`` (both by layer name), so
the graph never breaks.
The graph is dynamic in the number of tokens (one graph for any count, a single
token included), built at start-up by a warm-up run.

Building it is mostly dynamo tracing the decoder op by op (about 7 of a warm
start's 12 s on a 2-core CPU), which inductor's own caches do not save. So the
graph is compiled ahead of time (``aot_compile``, as vLLM does) and the result,
traced graph and inductor's code together, is saved under
``~/.cache/folo/compiled`` (``FOLO_COMPILE_CACHE``; ``FOLO_DISABLE_COMPILE_CACHE=1``
neither reads nor writes it), keyed by everything the trace depends on (see
``forward_fingerprint``); a later start with the same key loads it in a few
seconds instead. A cached graph that fails to load or run is deleted and compiled
anew. A model whose forward cannot be compiled ahead of time (torch's ahead-of-time
compile is young, and a third-party layer may hold what it cannot fake) is compiled in
process, uncached; any failure to compile falls back to eager with one warning.
``enforce_eager=True`` skips all of it.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch._dynamo.decorators import mark_unbacked

from folo_core.logger import init_logger
from folo_core.platform import cpu_flags
from folo_core.utils import error_summary

logger = init_logger(__name__)

ForwardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_RECOMPILE_LIMIT = 64
# The packages whose code a forward runs (the model, its layers, kernels, quantization methods).
_PACKAGES = ("folo_core", "folo_models", "folo_plugins")


def compile_cache_dir() -> Path | None:
    """Where compiled forwards are kept, or None when the cache is turned off."""
    if os.environ.get("FOLO_DISABLE_COMPILE_CACHE", "") not in ("", "0"):
        return None
    return Path(os.environ.get("FOLO_COMPILE_CACHE", Path.home() / ".cache" / "folo" / "compiled"))


def _describe(value: Any) -> str:
    """How a module attribute enters the key: tensors by their metadata (values are graph
    inputs), plain values (which the trace specialises on) by ``repr``, dataclasses too;
    anything else by its type alone."""
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}{tuple(value.stride())}{value.dtype}{value.layout}{value.device}"
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(_describe(v) for v in value) + "]"
    if hasattr(value, "__dataclass_fields__"):
        return repr(value)
    return type(value).__qualname__


def forward_fingerprint(model: nn.Module) -> str:
    """A key for a compiled forward of ``model``: what dynamo traced depends on the code that
    ran (every source file of Folo's packages and of the model's module classes), the model's
    structure (each module's type, plain attributes such as a norm's eps or a linear's kernel,
    and its tensors' shapes, strides and dtypes, not their values), and torch, Python and the
    CPU the kernels were built for."""
    key = hashlib.sha256()
    for part in (torch.__version__, sys.version, platform.machine(), " ".join(sorted(cpu_flags()))):
        key.update(part.encode())
    sources = {Path(sys.modules[p].__file__).parent.resolve() for p in _PACKAGES if p in sys.modules}
    files = {f for root in sources for f in root.rglob("*.py")}
    for module in model.modules():
        source = inspect.getsourcefile(type(module))
        if source is not None:
            files.add(Path(source).resolve())
    for path in sorted(files):
        key.update(str(path).encode())
        key.update(path.read_bytes())
    for name, module in model.named_modules():
        key.update(f"{name}:{type(module).__module__}.{type(module).__qualname__}".encode())
        attributes = {**vars(module), **dict(module.named_parameters(recurse=False)),
                      **dict(module.named_buffers(recurse=False))}
        for attr in sorted(a for a in attributes if a not in ("_parameters", "_buffers", "_modules")):
            if attr.startswith("_") and not isinstance(attributes[attr], torch.Tensor):
                continue  # nn.Module's own bookkeeping (hooks, flags)
            key.update(f"{attr}={_describe(attributes[attr])};".encode())
    return key.hexdigest()[:24]


def _mark_any_token_count(input_ids: torch.Tensor, positions: torch.Tensor) -> None:
    """Mark the token dimension unbacked, so dynamo builds one graph for every count, 1 included,
    not a second one specialised to a single token."""
    mark_unbacked(input_ids, 0)
    mark_unbacked(positions, positions.dim() - 1)  # [T], or [2, T] under dynamic rope


class CompiledForward:
    """``model(input_ids, positions)`` through a compiled graph once ``warm_up`` has succeeded."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._compiled: ForwardFn | None = None
        self.loaded_from_cache = False

    @property
    def active(self) -> bool:
        return self._compiled is not None

    def warm_up(self, run_batches: Callable[[ForwardFn], None]) -> bool:
        """Load or compile the graph and run ``run_batches`` with it; on any error, stay eager.

        ``run_batches(forward)`` runs the shapes the graph must cover (the caller
        owns the inputs and the forward context); the compiled function is used
        only if every one of them succeeds.
        """
        # Fused loops otherwise keep bf16/fp16 intermediates in float32, where eager (and HF)
        # round each op's result: logits then differ by a bf16 step, enough to flip greedy picks.
        torch._inductor.config.emulate_precision_casts = True
        # Float attributes (a norm's eps) are constants: traced as symbolic floats, they reach
        # ops that need a number, and dynamo restarts the whole trace to specialise them.
        torch._dynamo.config.specialize_float = True
        cache_dir = compile_cache_dir()
        path = cache_dir / f"forward-{forward_fingerprint(self.model)}.bin" if cache_dir is not None else None
        if path is not None and path.is_file() and self._warm_up_cached(path, run_batches):
            return True
        logger.info("compiling the model forward with torch.compile (once per model and machine; "
                    "enforce_eager=True skips this)")
        start = time.perf_counter()
        try:
            compiled = self._compile_ahead_of_time(run_batches)
        except Exception as exc:  # e.g. an input tensor its tracing cannot fake
            logger.info("the forward cannot be compiled ahead of time (%s); compiling it in this process, "
                        "uncached", error_summary(exc))
            compiled = None
        if compiled is None:
            try:
                self._compiled = self._compile_in_process(run_batches)
            except Exception as exc:  # no C++ compiler, an op inductor cannot lower, ...
                logger.warning("torch.compile of the model failed (%s); running eager", error_summary(exc))
                return False
        else:
            self._use_ahead_of_time(compiled)
        logger.info("model forward compiled in %.1f s", time.perf_counter() - start)
        if compiled is not None and path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                compiled.save_compiled_function(str(path))  # written beside and renamed: never partial
            except Exception as exc:  # an unserialisable graph, a read-only home, ...
                logger.warning("could not cache the compiled forward in %s (%s)", path, error_summary(exc))
        return True

    def _compile_ahead_of_time(self, run_batches: Callable[[ForwardFn], None]) -> Any:
        """torch's ``AOTCompiledFunction`` of the forward (called as ``fn(model, input_ids,
        positions)``), traced on the first warm-up batch and run on all of them."""
        compiled = None

        def forward(input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            nonlocal compiled
            _mark_any_token_count(input_ids, positions)
            if compiled is None:
                fn = torch.compile(type(self.model).forward, dynamic=True, fullgraph=True)
                compiled = fn.aot_compile(((self.model, input_ids, positions), {}))
            return compiled(self.model, input_ids, positions)

        run_batches(forward)
        return compiled

    def _compile_in_process(self, run_batches: Callable[[ForwardFn], None]) -> ForwardFn:
        """The forward through dynamo's ordinary per-process compile, for what cannot be saved."""
        # Dynamo keeps the graphs of every model instance of a class under one code object (one per
        # model shape); a process that builds several engines must not run out of room.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, _RECOMPILE_LIMIT)
        compiled = torch.compile(self.model.forward, dynamic=True, fullgraph=True)

        def forward(input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            _mark_any_token_count(input_ids, positions)
            return compiled(input_ids, positions)

        run_batches(forward)

        def run(input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            _mark_any_token_count(input_ids, positions)
            # Dynamo's guards (a tensor check per parameter) cost about 1 ms a step; warm-up has
            # built the graph every batch needs, and nothing they watch changes afterwards.
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                return compiled(input_ids, positions)

        return run

    def _warm_up_cached(self, path: Path, run_batches: Callable[[ForwardFn], None]) -> bool:
        """Load the graph saved at ``path`` and run the warm-up batches with it; a file that fails
        either way is deleted (it will be compiled and saved anew)."""
        start = time.perf_counter()
        try:
            with open(path, "rb") as f:
                compiled = torch.compiler.load_compiled_function(f)
            # Its guards were checked on every warm-up batch when it was built; token counts are
            # no longer marked unbacked here, which the saved guards would reject.
            compiled.disable_guard_check()
            run_batches(lambda input_ids, positions: compiled(self.model, input_ids, positions))
        except Exception as exc:
            logger.warning("the cached compiled forward %s is unusable (%s); compiling again", path,
                           error_summary(exc))
            path.unlink(missing_ok=True)
            return False
        self._use_ahead_of_time(compiled)
        self.loaded_from_cache = True
        logger.info("model forward loaded compiled from %s in %.1f s", path, time.perf_counter() - start)
        return True

    def _use_ahead_of_time(self, compiled: Any) -> None:
        # Guards (a tensor check per parameter) cost about 1 ms a step; warm-up has run the graph
        # on every kind of batch, and nothing they watch changes afterwards.
        compiled.disable_guard_check()
        self._compiled = lambda input_ids, positions: compiled(self.model, input_ids, positions)

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self._compiled is not None:
            return self._compiled(input_ids, positions)
        return self.model(input_ids, positions)
