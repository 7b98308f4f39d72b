"""Documents: candidate corpora, the offline data mirror, the selection file, set similarity."""
