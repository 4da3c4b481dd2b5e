"""Helpers for the review tests: store backends, reviewer files, a headless Debian Chromium."""
