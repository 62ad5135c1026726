"""Batch jobs on Ray Data: catalogue vectors and every known user's top-N."""
