"""mixtune.data"""
