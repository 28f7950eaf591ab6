"""manager/scheduler"""
