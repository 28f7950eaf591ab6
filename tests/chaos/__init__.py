"""Chaos tests: hosts killed and links cut on a lab; every service converges back."""
