"""t2i: text-to-image diffusion systems as thin compositions of one set of shared parts."""

__version__ = "0.1.0"
