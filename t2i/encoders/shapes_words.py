"""ShapesWorld's caption words (../shared/SHAPESWORLD.md): the names a caption can use, nothing rendered.

The tokenizer and the prompt labels (this floor) and the scene sampler and caption grammar
(t2i/data, which adds the colours' RGB values and the sizes' radii) all read these one tables.
"""

from __future__ import annotations

BACKGROUND_NAMES: tuple[str, ...] = ("white", "black", "gray")
COLOR_NAMES: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
SIZE_NAMES: tuple[str, ...] = ("small", "medium", "large")
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses"}
RELATION_WORDS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
# Function words of the caption grammar (t2i/data/captions.py)
GRAMMAR_WORDS = ("a", "an", "one", "that", "is", "in", "the", "at", "on", "and", "to", "of", "background")
