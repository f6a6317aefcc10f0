"""Benchmarks: anomdet measured against references on the same data, in one process."""
