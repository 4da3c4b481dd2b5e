"""mixtune.model"""
