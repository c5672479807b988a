"""Folo's built-in plugins: every concrete policy, one package per capability.

Each package is registered through the ``folo`` entry-point group in
``pyproject.toml``, exactly like a third-party plugin.
"""
