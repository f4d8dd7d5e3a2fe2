"""runstream indexer."""
