"""Compatibility tests: the real docker CLI 28 and the Python docker SDK against shoald."""
