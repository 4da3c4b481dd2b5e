"""mixtune.rules"""
