"""Sweeps: grids of recipes on a local process pool or a Ray cluster, stored in SQLite."""
