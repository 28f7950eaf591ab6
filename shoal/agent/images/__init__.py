"""agent/images"""
