"""Entry points: the ``folo`` command line (and the OpenAI-compatible server)."""
