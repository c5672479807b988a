"""Plugin loading: entry points, FOLO_LOAD_PLUGINS, broken plugins, unknown names, `folo plugins`."""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from folo_core import hookspecs
from folo_core.plugins import FoloPluginManager, PluginInfo, get_plugin_manager
from folo_core.registry import PluginSelectionError, SelectionContext

BUILTIN_PLUGINS = {"models", "naive", "paged", "continuous", "sampler", "gptq"}


def test_builtins_register_through_entry_points():
    eps = {ep.name: ep for ep in md.entry_points(group="folo")}
    assert BUILTIN_PLUGINS <= set(eps)
    manager = get_plugin_manager()
    for name in BUILTIN_PLUGINS:
        info = manager.plugins[name]
        assert info.error is None and info.distribution == "folovllm" and info.registered


def test_every_hook_has_an_implementation():
    """Like datasette's check: each hook spec is implemented by at least one built-in."""
    manager = get_plugin_manager()
    for kind, hook_name in hookspecs.HOOK_KINDS.items():
        assert manager.registry(kind).names(), f"no implementation of {hook_name}"


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    """Three plugin modules on sys.path, exposed as entry points of a fake distribution."""
    (tmp_path / "good_plugin.py").write_text(textwrap.dedent("""
        from folo_core.hookspecs import hookimpl
        class Sampler:
            pass
        @hookimpl
        def register_samplers(register):
            register("good", Sampler, priority=5)
    """))
    (tmp_path / "import_error_plugin.py").write_text("raise ImportError('needs a missing package')\n")
    (tmp_path / "raising_plugin.py").write_text(textwrap.dedent("""
        from folo_core.hookspecs import hookimpl
        @hookimpl
        def register_samplers(register):
            register("half_registered", object)
        @hookimpl
        def register_schedulers(register):
            raise RuntimeError("boom while registering")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    dist = SimpleNamespace(name="fake-dist", version="9.9")
    eps = []
    for name in ("good_plugin", "import_error_plugin", "raising_plugin"):
        ep = md.EntryPoint(name=name.replace("_plugin", ""), value=name, group="folo")
        eps.append(SimpleNamespace(name=ep.name, value=ep.value, load=ep.load, dist=dist))
    monkeypatch.setattr("folo_core.plugins.md.entry_points", lambda group: eps)
    return eps


def test_broken_plugins_are_reported_and_others_load(fake_plugins):
    manager = FoloPluginManager()
    manager.load_entry_points()
    assert manager.plugins["good"].error is None
    assert manager.registry("sampler").names() == ["good"]
    assert "needs a missing package" in manager.plugins["import_error"].error
    assert "boom while registering" in manager.plugins["raising"].error
    # Nothing of a plugin that failed half-way stays registered.
    assert "half_registered" not in manager.registry("sampler")


def test_allowlist_by_entry_point_or_distribution(fake_plugins):
    manager = FoloPluginManager()
    manager.load_entry_points(allow={"good"})
    assert set(manager.plugins) == {"good"}
    manager = FoloPluginManager()
    manager.load_entry_points(allow={"fake-dist"})
    assert set(manager.plugins) == {"good", "import_error", "raising"}
    manager = FoloPluginManager()
    manager.load_entry_points(allow=set())
    assert manager.plugins == {}


def test_duplicate_name_fails_the_second_plugin():
    manager = FoloPluginManager()

    class First:
        @staticmethod
        @hookspecs.hookimpl
        def register_samplers(register):
            register("same", object)

    class Second(First):
        pass

    manager.register(First(), PluginInfo("first"))
    info = manager.register(Second(), PluginInfo("second"))
    assert "already registered by plugin 'first'" in info.error
    assert manager.registry("sampler").get("same").plugin == "first"


def test_unknown_name_lists_known_ones():
    registry = get_plugin_manager().registry("attention_backend")
    with pytest.raises(PluginSelectionError, match=r"unknown attention_backend 'nope'; known: .*naive.*paged"):
        registry.select("nope", SelectionContext())


def test_auto_skips_ineligible_and_explains(monkeypatch):
    manager = FoloPluginManager()

    class Picky:
        @staticmethod
        def check_eligibility(ctx):
            return ["needs a GPU"] if ctx.device != "cuda" else []

    class Plugin:
        @staticmethod
        @hookspecs.hookimpl
        def register_samplers(register):
            register("picky", Picky, priority=10)
            register("plain", object, priority=1)

    manager.register(Plugin(), PluginInfo("p"))
    registry = manager.registry("sampler")
    assert registry.select("auto", SelectionContext(device="cpu")).name == "plain"
    assert registry.select("auto", SelectionContext(device="cuda")).name == "picky"
    with pytest.raises(PluginSelectionError, match="needs a GPU"):
        registry.select("picky", SelectionContext(device="cpu"))


def run_folo(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "folo_core.entrypoints.cli", *args],
                          capture_output=True, text=True, timeout=120, env=env)


def test_folo_plugins_json():
    result = run_folo("plugins", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    plugins = {p["name"]: p for p in report["plugins"]}
    assert BUILTIN_PLUGINS <= set(plugins)
    assert plugins["paged"]["registered"]["attention_backend"] == ["paged"]
    assert plugins["naive"]["version"] == md.version("folovllm")


def test_folo_plugins_text_and_allowlist_env():
    import os

    result = run_folo("plugins", env={**os.environ, "FOLO_LOAD_PLUGINS": "naive,sampler"})
    assert result.returncode == 0, result.stderr
    assert "naive (folovllm" in result.stdout and "sampler (folovllm" in result.stdout
    assert "paged (" not in result.stdout


def test_folo_plugins_explain_picks_paged_here(tiny_model_dir):
    result = run_folo("plugins", "--explain", "--json", "--model", str(tiny_model_dir("qwen2")))
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["explain"]["attention_backend"]
    assert [r["name"] for r in rows if r["selected"]] == ["paged"]


def test_the_plugin_kind_table_is_true():
    """Each kind's hook exists, its contract imports, and its config field (if any) is in EngineConfig."""
    import importlib

    from folo_core.config import EngineConfig

    config = EngineConfig()
    for kind in hookspecs.PLUGIN_KINDS:
        assert callable(getattr(hookspecs, kind.hook))
        module, _, name = kind.contract.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), name), type)
        if kind.config_field:
            assert kind.configured(config) == "auto"
