"""Serving: a FastChat-protocol vLLM worker, FastChat's controller and API server (extended), and the launcher."""
