"""runstream agents."""
