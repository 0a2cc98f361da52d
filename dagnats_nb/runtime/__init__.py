"""What runs workflows: the orchestrator (history -> ``dag.advance`` -> actions), the task
workers (in the engine or in worker processes), dead letters and worker affinity."""
