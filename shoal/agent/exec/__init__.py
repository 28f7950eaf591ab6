"""agent/exec"""
