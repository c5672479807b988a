"""Compute kernels the core runs on: CPU linears, the graph-opaque ops, C++ op builds."""
