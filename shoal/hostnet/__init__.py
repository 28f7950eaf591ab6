"""hostnet"""
