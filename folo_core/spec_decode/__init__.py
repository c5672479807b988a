"""Speculative decoding: the proposer contract, rejection sampling and its metrics."""
