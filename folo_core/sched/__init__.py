"""Scheduler contract and the data it exchanges with the model runner."""
