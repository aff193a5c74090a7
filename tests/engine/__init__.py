"""The compression engine (ctxgate.compressor): methods, models, caches, structured content."""
