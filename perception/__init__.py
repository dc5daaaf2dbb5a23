"""Perception stages: vision and audio encoders that write embeddings into shared memory."""
