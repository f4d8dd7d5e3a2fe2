"""runstream ost."""
