"""Orchestration: stages and their runner, preflight, sweeps, the CI gate, the command line and its summary."""
