"""Models: resolution and safe loading, the θ0/θf pair checks, layers by name, synthetic checkpoints θα."""
