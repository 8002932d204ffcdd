"""Benchmarks (not tests): each writes JSON under bench/results/ and prints a one-line summary."""
