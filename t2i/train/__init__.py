"""The one trainer: recipes (TOML) -> a stage (diffusion, autoencoder, ...) trained with resumable checkpoints.

    from t2i.train import Trainer, load_recipe
    result = Trainer(load_recipe("tiny_pixel"), "runs/tiny", resume=True).run()
"""

from t2i.encoders.registry import TEXT_ENCODERS  # the one text-encoder registry, for training and loading
from t2i.train.checkpoint import CheckpointError, latest_checkpoint, read_checkpoint, save_checkpoint
from t2i.train.config import RecipeError
from t2i.train.recipe import DataConfig, Recipe, TrainConfig, bundled_recipes, load_recipe
from t2i.train.registry import DATASETS, NETWORKS, STAGES
from t2i.train.trainer import Trainer, TrainingError, TrainResult

__all__ = [
    "CheckpointError", "DATASETS", "DataConfig", "NETWORKS", "Recipe", "RecipeError", "STAGES", "TEXT_ENCODERS",
    "TrainConfig", "TrainResult", "Trainer", "TrainingError", "bundled_recipes", "latest_checkpoint",
    "load_recipe", "read_checkpoint", "save_checkpoint",
]
