"""batchgen: turn a manifest of prompts into a folder of images from imagen4-ultra, resumably."""

__version__ = "0.1.0"
