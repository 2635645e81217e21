"""t2i: text-to-image diffusion systems as thin compositions of one set of shared parts."""

__version__ = "0.1.0"

from t2i.api import load  # noqa: E402  t2i.load("ldm") / t2i.load(PATH) -> a system with .generate(prompt)

__all__ = ["load", "__version__"]
