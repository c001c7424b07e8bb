"""Benchmarks shipped with the package (``aghmn-fast bench``)."""
