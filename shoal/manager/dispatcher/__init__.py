"""manager/dispatcher"""
