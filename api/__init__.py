"""runstream api."""
