"""The chapter's classifier, framework-free: data, model, losses and the training loop."""

from trainables.config import ConfigError, DataConfig, TrainConfig
from trainables.data import DataError, StudyData, load_study_data
from trainables.loop import FitResult, fit

__all__ = ["ConfigError", "DataConfig", "DataError", "FitResult", "StudyData", "TrainConfig", "fit", "load_study_data"]
