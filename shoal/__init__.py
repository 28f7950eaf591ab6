"""Shoal: a container orchestrator that behaves like Docker Swarm and speaks its API."""

__version__ = "0.1.0"
