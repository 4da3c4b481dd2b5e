"""mixtune.eval"""
