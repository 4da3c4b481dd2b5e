"""mixtune.train"""
