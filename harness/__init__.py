"""Real tideserve processes on loopback, shared by the tests and the benchmarks (not shipped)."""
