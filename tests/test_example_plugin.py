"""The example third-party plugin, installed as a user would install it, shows up in `folo plugins`.

Its conformance and HF-greedy tests live with it (examples/folo-attention-example/tests,
in this project's testpaths), as a plugin author's would.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys


def test_example_is_installed_as_its_own_distribution():
    eps = {ep.name: ep for ep in md.entry_points(group="folo")}
    assert "chunked_online_softmax" in eps, (
        "install the example: pip install --no-deps -e examples/folo-attention-example (scripts/setup.sh does)")
    assert eps["chunked_online_softmax"].dist.name == "folo-attention-example"


def test_folo_plugins_lists_the_example():
    result = subprocess.run([sys.executable, "-m", "folo_core.entrypoints.cli", "plugins", "--json", "--explain"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    plugin = next(p for p in report["plugins"] if p["name"] == "chunked_online_softmax")
    assert plugin["error"] is None
    assert (plugin["distribution"], plugin["version"]) == ("folo-attention-example", "0.1.0")
    assert plugin["registered"] == {"attention_backend": ["chunked_online_softmax"]}
    row = next(r for r in report["explain"]["attention_backend"] if r["name"] == "chunked_online_softmax")
    assert row["reasons"] == [] and not row["selected"]  # eligible here; installing it does not change `auto`
