"""Typed registries built from the plugin hooks: name -> implementation.

An implementation may declare ``check_eligibility(ctx) -> list[str]`` (reasons it
cannot run in ``ctx``; empty means eligible). ``auto`` walks the entries by
descending priority and takes the first eligible one, so a faster backend wins
wherever it can run and the reference remains the fallback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


class PluginSelectionError(ValueError):
    """A plugin name could not be resolved to a usable implementation."""


@dataclass(frozen=True)
class SelectionContext:
    """What the engine knows when it picks implementations (all optional)."""

    device: str = "cpu"
    dtype: torch.dtype | None = None
    head_size: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    block_size: int | None = None
    architecture: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RegistryEntry:
    kind: str
    name: str
    impl: Any
    plugin: str
    priority: int = 0

    def ineligibility(self, ctx: SelectionContext) -> list[str]:
        """Reasons this implementation cannot run in ``ctx``; empty if it can."""
        check = getattr(self.impl, "check_eligibility", None)
        if check is None:
            return []
        try:
            return list(check(ctx))
        except Exception as exc:  # a plugin's own check must not take the engine down
            return [f"eligibility check raised {type(exc).__name__}: {exc}"]


class Registry:
    """Name -> implementation for one plugin kind (e.g. ``attention_backend``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, RegistryEntry] = {}

    def add(self, entry: RegistryEntry) -> None:
        existing = self._entries.get(entry.name)
        if existing is not None:
            raise PluginSelectionError(
                f"{self.kind} {entry.name!r} is already registered by plugin {existing.plugin!r}"
            )
        self._entries[entry.name] = entry

    def remove_plugin(self, plugin: str) -> None:
        self._entries = {n: e for n, e in self._entries.items() if e.plugin != plugin}

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[RegistryEntry]:
        """Entries in ``auto`` order: highest priority first, then by name."""
        return sorted(self._entries.values(), key=lambda e: (-e.priority, e.name))

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> RegistryEntry:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names()) or "none (no plugin registers one; check FOLO_LOAD_PLUGINS)"
            raise PluginSelectionError(
                f"unknown {self.kind} {name!r}; known: {known}"
            ) from None

    def explain(self, ctx: SelectionContext) -> list[tuple[RegistryEntry, list[str]]]:
        """Every entry in ``auto`` order with the reasons it is not eligible."""
        return [(e, e.ineligibility(ctx)) for e in self.entries()]

    def select(self, name: str, ctx: SelectionContext) -> RegistryEntry:
        """Resolve ``name`` (or ``auto``) to an entry that can run in ``ctx``."""
        if name != "auto":
            entry = self.get(name)
            reasons = entry.ineligibility(ctx)
            if reasons:
                raise PluginSelectionError(
                    f"{self.kind} {name!r} cannot be used here: " + "; ".join(reasons)
                )
            return entry
        report = self.explain(ctx)
        for entry, reasons in report:
            if not reasons:
                return entry
        details = "; ".join(f"{e.name}: {', '.join(r)}" for e, r in report) or "none registered"
        raise PluginSelectionError(f"no eligible {self.kind} for 'auto' ({details})")
