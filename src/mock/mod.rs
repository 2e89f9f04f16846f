//! A faithful mock of the awork API for tests, the demo and benchmarks.
