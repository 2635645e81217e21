"""Datasets: ShapesWorld (procedural, exact ground truth), captioned image folders, OpenMoji emoji.

Every dataset yields (image tensor (3, H, W) in [-1, 1], caption, meta dict); batch with `collate`.
"""

from t2i.data.emoji import EmojiDataset
from t2i.data.folder import ImageFolderDataset
from t2i.data.scene import DEFAULT_HELD_OUT, Obj, Scene
from t2i.data.shapes import ShapesWorld
from t2i.data.transforms import collate

__all__ = ["ShapesWorld", "Scene", "Obj", "DEFAULT_HELD_OUT", "collate", "ImageFolderDataset", "EmojiDataset"]
