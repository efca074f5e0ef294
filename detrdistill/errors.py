"""The root of every error detrdistill raises on purpose, and its few kinds.

An expected failure (bad config, bad data, an unreadable checkpoint, an unsupported model) raises a
subclass of :class:`DetrDistillError` whose message is one line naming the file or key and what to do;
the CLI prints it as ``error: ...``. Anything else is a bug and surfaces with its traceback.

Each kind also derives from the built-in exception it replaced (``ValueError``, ``RuntimeError`` ...),
so ``except ValueError`` written before the root existed still catches it.
"""
from __future__ import annotations

__all__ = ["DetrDistillError", "ConfigError", "ModelError", "UnsupportedFamilyError", "NoQueryTableError",
           "IncompatibleQueriesError", "IncompatibleModelsError", "UnsupportedSettingError", "PathNotFoundError",
           "CheckpointError", "TransformersAPIError", "NonFiniteLossError", "InputSizeError", "LabelsError",
           "PredictError"]


class DetrDistillError(Exception):
    """Base class of the package's deliberate, user-facing errors."""


class ConfigError(DetrDistillError, ValueError):
    """A configuration problem, always one line naming the key (or file) at fault."""


class ModelError(DetrDistillError, ValueError):
    """A model that cannot be built, loaded or adapted as configured (names the setting or directory)."""


class UnsupportedFamilyError(ModelError):
    """The model's ``config.model_type`` has no adapter (the message lists the supported families)."""


class NoQueryTableError(ModelError, NotImplementedError):
    """The model has no learned query table (dynamic, per-image queries: two-stage Deformable, RT-DETR).

    Use ``DetectorOutput.queries`` of a forward instead. Catchable as NotImplementedError or ValueError.
    """


class InputSizeError(ModelError):
    """A batch whose padded size the model cannot take (e.g. a windowed ViT backbone's side multiple)."""


class IncompatibleQueriesError(ModelError):
    """Teacher queries cannot be mapped onto the student's query form."""


class IncompatibleModelsError(ModelError):
    """Teacher and student (or the dataset) disagree on something distillation needs, e.g. the label map."""


class UnsupportedSettingError(DetrDistillError, NotImplementedError):
    """A documented setting this implementation does not support (the message says what to set instead)."""


class PathNotFoundError(DetrDistillError, FileNotFoundError):
    """A file or directory the user named does not exist (or is not what it should be)."""


class CheckpointError(DetrDistillError, RuntimeError):
    """A training checkpoint that cannot be resumed here (other config, other process count ...)."""


class TransformersAPIError(DetrDistillError, RuntimeError):
    """The installed transformers no longer has an API an adapter relies on (names version and argument)."""


class NonFiniteLossError(DetrDistillError, FloatingPointError):
    """Training diverged: the loss is nan or inf (the message says which knob to turn)."""


class LabelsError(DetrDistillError, ValueError):
    """Training labels given to the Python API that cannot be read (format, missing image sizes, unknown category)."""


class PredictError(DetrDistillError):
    """An input of ``detrdistill predict`` that cannot be used: a missing model directory or path, an unreadable
    image, an ``--ann`` file that does not describe the images or the model's classes."""
