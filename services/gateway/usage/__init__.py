"""Usage logging: one SQL row per request answered, never lost (batched, retried, spilled, replayed)."""
