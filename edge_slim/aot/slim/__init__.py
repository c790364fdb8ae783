"""`edge-slim slim`: structured pruning, distillation from a teacher bundle, and the choice of a candidate on
the size / error / latency frontier (docs/slim.md). Ahead-of-time code: needs torch; never imported at run time."""
