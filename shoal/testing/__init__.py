"""Fakes Shoal ships for fast unit tests (DESIGN.md §5.4): each stands in for one narrow protocol.

- fake_executor.FakeExecutor: the agent's Executor in memory (used by tests/unit/test_runner.py
  and tests/unit/test_agent_session.py).

Integration and compatibility tests never import this package (an import-linter contract).
"""
