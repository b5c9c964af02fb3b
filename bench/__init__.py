"""Benchmarks: ``python -m bench SCENARIO [--quick] [--json PATH] [--redis-url URL]``.

Scenarios live in ``bench/scenarios``; figures and how to read them are in docs/benchmarks.md.
"""
