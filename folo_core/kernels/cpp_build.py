"""Build and load a one-file C++ operator library for this machine's CPU, once.

Some CPU kernels (paged decode attention) have no fast torch equivalent and
cost more in per-op dispatch than in arithmetic when composed from torch ops.
They ship as C++ sources that register ``torch.library`` ops; this module
compiles one with the system C++ compiler against the installed torch, with
``-march=native`` (so the cache key includes the CPU's ISA flags), into
``~/.cache/folo/kernels`` (``FOLO_KERNEL_CACHE`` overrides), and loads it with
``torch.ops.load_library``. A compile takes about 10 s on 2 cores; later
processes load the cached library in milliseconds. Without a compiler, or on
any build error, ``load_cpp_ops`` logs one warning and returns False, and the
caller keeps its pure-torch path.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from folo_core.logger import init_logger
from folo_core.platform import cpu_flags
from folo_core.utils import error_summary

logger = init_logger(__name__)


def kernel_cache_dir() -> Path:
    return Path(os.environ.get("FOLO_KERNEL_CACHE", Path.home() / ".cache" / "folo" / "kernels"))


def _compile_command(source: Path, output: Path) -> list[str]:
    from torch.utils import cpp_extension

    return [
        os.environ.get("CXX", "c++"), "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++20",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        *(f"-I{p}" for p in cpp_extension.include_paths()), str(source), "-o", str(output),
        *(f"-L{p}" for p in cpp_extension.library_paths()), "-lc10", "-ltorch_cpu", "-ltorch",
    ]


def _library_path(source: Path) -> Path:
    """Where this source's build for this torch, compiler command and CPU lives."""
    key = hashlib.sha256()
    key.update(source.read_bytes())
    key.update(" ".join(_compile_command(source, Path("out.so"))).encode())
    key.update(" ".join(sorted(cpu_flags())).encode())
    key.update(torch.__version__.encode())
    return kernel_cache_dir() / f"{source.stem}-{key.hexdigest()[:16]}.so"


@functools.cache
def load_cpp_ops(source: Path) -> bool:
    """Compile (if not cached) and load the op library in ``source``; False if it cannot be."""
    try:
        library = _library_path(source)
        if not library.exists():
            if shutil.which(os.environ.get("CXX", "c++")) is None:
                raise RuntimeError("no C++ compiler found (set CXX)")
            logger.info("compiling the CPU kernels in %s (once per machine; cached in %s)",
                        source.name, library.parent)
            library.parent.mkdir(parents=True, exist_ok=True)
            # Build beside the target and rename: concurrent processes never load a partial file.
            with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
                built = Path(tmp) / library.name
                result = subprocess.run(_compile_command(source, built), capture_output=True, text=True)
                if result.returncode != 0:
                    raise RuntimeError(f"compiler exited with {result.returncode}: {result.stderr[-2000:]}")
                os.replace(built, library)
        torch.ops.load_library(str(library))
        return True
    except Exception as exc:  # no compiler, missing headers, a sandbox without exec, ...
        logger.warning("CPU kernels of %s unavailable (%s); using the torch fallback", source.name,
                       error_summary(exc))
        return False
