"""Experiments: grids of ordinary runs (axes over flags), split over machines, and the report
(`report.md` + PNG figures) rebuilt from whatever cells have finished (DESIGN §12)."""
