"""The object model and the protocols between Shoal's parts. Imports nothing else of Shoal."""
