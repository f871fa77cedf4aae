"""Runners: the long-running processes (worker, replay) and what they check before starting."""
