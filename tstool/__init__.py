"""tstool: train small TinyStories language models and measure how they use articles."""

__version__ = "0.1.0"
