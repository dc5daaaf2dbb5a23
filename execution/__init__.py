"""Execution stage: the OpenAI-compatible HTTP gateway and phone actions."""
