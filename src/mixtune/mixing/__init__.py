"""mixtune.mixing"""
