"""manager/orchestrator"""
