"""Latency-budget planning: solve (the knapsack over a device profile), formats (structured vs 2:4 vs block per layer), measured (plans refined by timing on this machine)."""
