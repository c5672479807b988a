"""The OpenAI-compatible server; needs the ``serve`` extra (FastAPI, uvicorn, prometheus-client)."""
