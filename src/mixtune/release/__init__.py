"""mixtune.release"""
