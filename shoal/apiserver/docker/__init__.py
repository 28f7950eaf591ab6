"""apiserver/docker"""
