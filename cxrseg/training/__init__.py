"""Training: the loop, resumable state, the schedule and stop signals, and multi-process runs."""
