"""The leaderboard: θ0, the expert θf and every (strategy, k, seed) approximation scored by lm-eval
on one target task and extra tasks, summarised as tables, plots and one HTML page."""
