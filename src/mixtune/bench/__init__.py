"""mixtune.bench"""
