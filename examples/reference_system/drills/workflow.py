"""Drills 9-11: the Workflow scenarios of the failure-mode analysis."""
