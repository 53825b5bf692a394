"""Serving: an OpenAI-compatible API and a web chat page (`ownllm serve`)."""
