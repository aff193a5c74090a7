"""The eval harness and the benchmarks (ctxgate eval, ctxgate bench)."""
