"""What a run shows and leaves behind: metrics.jsonl, progress, tables and plots."""
