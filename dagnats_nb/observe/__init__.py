"""Read-only views of a running engine: stats, health, sizing, plots."""
