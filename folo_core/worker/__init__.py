"""The model runner and its persistent per-request input state."""
