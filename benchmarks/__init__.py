"""Benchmarks of halo-lifecycle: ``make bench`` (``python -m benchmarks``) writes docs/benchmarks.md.

Each module measures one figure and its baseline in the same run and returns a ``benchmarks.common.Result``.
"""
