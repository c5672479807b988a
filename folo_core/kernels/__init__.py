"""Compute kernels the core's default methods run on (CPU linears)."""
