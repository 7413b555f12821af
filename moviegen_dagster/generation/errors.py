"""Exceptions raised by generation code."""


class GenerationCancelled(Exception):
    """The task was cancelled; generation stopped at the end of a denoising step."""
