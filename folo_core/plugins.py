"""The one plugin manager: loads the ``folo`` entry-point group into registries.

Each plugin is registered on its own and its hooks are called on their own, so a
plugin that fails to import or raises while registering is reported by name and
leaves the others (and the registries) untouched.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from folo_core import hookspecs
from folo_core.logger import init_logger
from folo_core.registry import Registry, RegistryEntry

logger = init_logger(__name__)

ENTRY_POINT_GROUP = "folo"
LOAD_PLUGINS_ENV = "FOLO_LOAD_PLUGINS"


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, as ``folo plugins`` shows it."""

    name: str
    distribution: str | None = None
    version: str | None = None
    module: str | None = None
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "registered": self.registered,
            "error": self.error,
        }


def _allowlist() -> set[str] | None:
    """Names from ``FOLO_LOAD_PLUGINS`` (entry-point or distribution names); None = all."""
    raw = os.environ.get(LOAD_PLUGINS_ENV)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


class FoloPluginManager:
    """pluggy's manager plus the typed registries its hooks fill."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("folo")
        self.pm.add_hookspecs(hookspecs)
        self.registries: dict[str, Registry] = {k: Registry(k) for k in hookspecs.HOOK_KINDS}
        self.plugins: dict[str, PluginInfo] = {}
        self.hand_registered = False  # a plugin came from ``register``, not an entry point

    def registry(self, kind: str) -> Registry:
        return self.registries[kind]

    def load_entry_points(self, allow: set[str] | None = None) -> None:
        """Load every ``folo`` entry point whose name or distribution is allowed."""
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else None
            if allow is not None and ep.name not in allow and dist not in allow:
                continue
            info = PluginInfo(
                name=ep.name,
                distribution=dist,
                version=ep.dist.version if ep.dist is not None else None,
                module=ep.value,
            )
            try:
                module = ep.load()
            except Exception as exc:
                self._fail(info, f"import failed: {type(exc).__name__}: {exc}")
                continue
            self._register(module, info)

    @property
    def portable(self) -> bool:
        """Whether ``get_plugin_manager()`` in another process builds the same registries."""
        return not self.hand_registered

    def register(self, plugin: ModuleType | object, info: PluginInfo) -> PluginInfo:
        """Register one plugin object and run its hooks in isolation."""
        self.hand_registered = True
        return self._register(plugin, info)

    def _register(self, plugin: ModuleType | object, info: PluginInfo) -> PluginInfo:
        self.plugins[info.name] = info
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as exc:
            return self._fail(info, f"registration failed: {type(exc).__name__}: {exc}")
        pending: list[RegistryEntry] = []
        try:
            for kind, hook_name in hookspecs.HOOK_KINDS.items():
                for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                    if impl.plugin_name == info.name:
                        impl.function(register=self._collector(kind, info.name, pending))
            for entry in pending:
                self.registries[entry.kind].add(entry)
                info.registered.setdefault(entry.kind, []).append(entry.name)
        except Exception as exc:
            for registry in self.registries.values():
                registry.remove_plugin(info.name)
            info.registered.clear()
            self.pm.unregister(name=info.name)
            return self._fail(info, f"{type(exc).__name__}: {exc}")
        return info

    @staticmethod
    def _collector(kind: str, plugin: str, pending: list[RegistryEntry]):
        def register(name: str, impl: Any, *, priority: int = 0) -> None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")
            pending.append(RegistryEntry(kind, name, impl, plugin, priority))

        return register

    def _fail(self, info: PluginInfo, error: str) -> PluginInfo:
        info.error = error
        self.plugins[info.name] = info
        logger.warning("plugin %r (%s) not loaded: %s", info.name, info.distribution, error)
        return info


@functools.lru_cache(maxsize=1)
def get_plugin_manager() -> FoloPluginManager:
    """The process-wide manager, loaded once from entry points and ``FOLO_LOAD_PLUGINS``."""
    manager = FoloPluginManager()
    manager.load_entry_points(_allowlist())
    return manager
