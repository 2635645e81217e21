"""Bundled training recipes (TOML), one per system stage; see t2i.train.recipe."""
