"""Preset leaderboard configurations shipped with the package."""
