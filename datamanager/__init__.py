"""runstream datamanager."""
