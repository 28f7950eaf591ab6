"""agent/network"""
