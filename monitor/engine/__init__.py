"""Polling and change detection: settings, the scheduler, diffing, the bus, rollouts, and the one pipeline."""
