"""The cache: atomic writes, paths kept inside their root, checksummed stage folders."""
