"""Benchmarks behind every performance figure (`autoglm bench ...`); results in benchmarks/results/."""
