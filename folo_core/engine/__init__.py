"""The engine: user API (``LLM``), ``LLMEngine``, the step loop and output processing."""
