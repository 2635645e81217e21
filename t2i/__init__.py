"""t2i: text-to-image diffusion systems as thin compositions of one set of shared parts."""

__version__ = "0.1.0"

from t2i.api import load  # noqa: E402  t2i.load("ldm") / t2i.load(PATH) -> a system with .generate(prompt)



def annotate(image, kind: str, seed: int = 0):
    """An image's control map for a ControlNet: kind edges | segmentation | scribble -> PIL image (t2i.data.annotate)."""
    from t2i.data.annotate import annotate as run

    return run(image, kind, seed)


__all__ = ["annotate", "load", "__version__"]
