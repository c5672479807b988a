"""Where the flash-attn kernels come from, and why they may be unavailable.

The ``flash_attn`` package is imported lazily and defensively: on a machine
without CUDA it is usually absent, and a half-installed build can fail to
import with anything (ImportError, OSError for a missing libcudart, ...). The
backend calls the kernels through ``flash_attn_ops`` so tests can put the
pure-torch reference there.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from types import ModuleType

INSTALL_HINT = "pip install flash-attn --no-build-isolation, on a machine with CUDA and its toolkit"
KERNELS = ("flash_attn_varlen_func", "flash_attn_with_kvcache")

#: The module whose ``flash_attn_varlen_func`` / ``flash_attn_with_kvcache`` the
#: backend calls: None until first use, then the ``flash_attn`` package.
flash_attn_ops: ModuleType | None = None


def probe_flash_attn() -> tuple[ModuleType | None, str | None]:
    """Import ``flash_attn`` and check it has the paged kernels; (module, None) or (None, what is wrong)."""
    try:
        if importlib.util.find_spec("flash_attn") is None:
            return None, f"the flash_attn package is not installed ({INSTALL_HINT})"
        module = importlib.import_module("flash_attn")
    except Exception as exc:  # a broken install must make the backend ineligible, not crash selection
        return None, f"the flash_attn package failed to import ({type(exc).__name__}: {exc})"
    version = getattr(module, "__version__", "?")
    missing = [name for name in KERNELS if not callable(getattr(module, name, None))]
    if missing:
        return None, f"flash_attn {version} lacks {', '.join(missing)}"
    try:
        paged = "block_table" in inspect.signature(module.flash_attn_varlen_func).parameters
    except (TypeError, ValueError):
        paged = False
    if not paged:
        return None, f"flash_attn {version} has no paged KV support in flash_attn_varlen_func (needs 2.5.7+)"
    return module, None


def kernels_take_softcap() -> bool:
    """Whether the installed kernels take ``softcap`` (flash-attn 2.6+), which Gemma 2 needs."""
    module = flash_attn_ops or probe_flash_attn()[0]
    try:
        return module is not None and "softcap" in inspect.signature(module.flash_attn_varlen_func).parameters
    except (TypeError, ValueError):
        return False


def kernels_missing() -> str | None:
    """What keeps the kernels from being usable here, or None."""
    return None if flash_attn_ops is not None else probe_flash_attn()[1]


def get_flash_attn_ops() -> ModuleType:
    """The kernels module, imported on first use."""
    global flash_attn_ops
    if flash_attn_ops is None:
        module, error = probe_flash_attn()
        if module is None:
            raise RuntimeError(error)
        flash_attn_ops = module
    return flash_attn_ops
