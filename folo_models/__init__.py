"""Model definitions (one decoder for Llama, Qwen2 and Qwen3) and weight loading."""
