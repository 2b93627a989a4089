"""Where a run's figures go: metrics.jsonl (one reader, one writer) and external trackers."""
