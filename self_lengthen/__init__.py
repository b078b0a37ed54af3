"""Self-Lengthen: iterative self-training for long-form generation."""
