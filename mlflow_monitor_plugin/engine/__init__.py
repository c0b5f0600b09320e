"""The monitoring loop: one pass for one monitor, the per-monitor lease, and the daemon."""
