"""Experiments: grids of runs over flags (spec, runner) and their report (report.md + figures)."""
