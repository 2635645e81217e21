"""ShapesEval: the analytic ShapesWorld detector, the versioned prompt suite, scoring, and the Fréchet feature distance."""

from t2i.eval.detector import Detection, detect
from t2i.eval.features import FEATURES_VERSION, fd, frechet_distance, image_features
from t2i.eval.shapeseval import evaluate, evaluate_dir, ground_truth_images, markdown_table, score
from t2i.eval.suite import CATEGORIES, SUITE_VERSION, Spec, Want, build_suite, passes

__all__ = [
    "Detection", "detect", "evaluate", "evaluate_dir", "ground_truth_images", "markdown_table", "score",
    "CATEGORIES", "SUITE_VERSION", "Spec", "Want", "build_suite", "passes",
    "FEATURES_VERSION", "fd", "frechet_distance", "image_features",
]
