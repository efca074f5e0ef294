"""Typed, validated run configuration: YAML file + ``--set key=value`` overrides.

Every section is a pydantic model with ``extra="forbid"``, so an unknown key or a value of the wrong
type is rejected before any work starts, with a one-line :class:`ConfigError` naming the key.

    cfg = load_config("configs/synth.yaml", overrides=["train.epochs=3", "model.d_model=128"])
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError



def __getattr__(name: str):  # FAMILIES: the registered model families (detrdistill.models.families), on demand
    if name == "FAMILIES":
        return _family_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _family_names() -> tuple[str, ...]:
    from .models.families import family_names  # the registry imports its adapters: only when a family is checked
    return family_names()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def data_root() -> str:
    """The folder ``${DETRDISTILL_DATA}`` in a config's paths stands for: the ``DETRDISTILL_DATA`` env var."""
    root = os.environ.get("DETRDISTILL_DATA")
    if not root:
        raise ConfigError("a data path uses ${DETRDISTILL_DATA} but the DETRDISTILL_DATA environment variable is "
                          "not set; export DETRDISTILL_DATA=/path/to/datasets (the folder holding e.g. bccd/)")
    return root


class SplitConfig(_Section):
    """One split. Paths may use ``${DETRDISTILL_DATA}`` (see :func:`data_root`) and other env vars."""
    ann_file: str = Field(description="COCO json with images/annotations/categories")
    image_dir: str = Field(description="folder the json's file_name entries are relative to")

    @field_validator("ann_file", "image_dir")
    @classmethod
    def _expand(cls, v: str) -> str:
        if "${DETRDISTILL_DATA}" in v:
            v = v.replace("${DETRDISTILL_DATA}", data_root())
        return os.path.expandvars(v)


class DataConfig(_Section):
    train: SplitConfig | None = None
    val: SplitConfig | None = None
    test: SplitConfig | None = None
    synthetic: bool = Field(False, description="generate the synthetic set into <output_dir>/data if train/val are unset")
    synth_images: int = Field(160, ge=4, description="train images for the synthetic set (val gets a quarter)")
    synth_size: int = Field(256, ge=64, description="side of the synthetic images")
    synth_seed: int = 0
    synth_dir: str | None = Field(None, description="where the synthetic set is written (default <output_dir>/data)")
    defects: Literal["repair", "skip", "error"] = Field(
        "repair",
        description="bad annotations: 'repair' clips boxes to the image and drops zero-area ones, "
        "'skip' drops every annotation with a defect, 'error' refuses to train")
    min_size: list[int] = Field([480, 512, 544, 576, 608], description="training short-side scales (one is drawn per image)")
    max_size: int = Field(800, ge=32, description="longest side after resizing")
    eval_size: int = Field(512, ge=32, description="evaluation short side")
    hflip: float = Field(0.5, ge=0, le=1)
    crop: float = Field(0.5, ge=0, le=1, description="probability of a random crop before resizing")
    crop_min: float = Field(0.5, gt=0, le=1, description="smallest crop side as a fraction of the image side")
    num_workers: int = Field(2, ge=0)
    cache_images: float = Field(
        0.0, ge=0, description="GiB of decoded training images each loader process keeps in memory (0 = none): "
        "identical pixels, each file decoded once per process instead of once per epoch; for small sets on few cores")


class BackboneConfig(_Section):
    """transformers' own ResNet (``ResNetConfig``): random init, or ``pretrained`` weights (whose architecture then
    replaces embedding_size / hidden_sizes / depths / layer_type)."""
    pretrained: str | None = Field(None, description="ResNet to start from: local dir or hub id of a transformers "
                                   "ResNet (e.g. microsoft/resnet-18) or a plain timm one (e.g. timm/resnet50.a1_in1k; "
                                   "timm itself is not needed)")
    embedding_size: int = 64
    hidden_sizes: list[int] = [64, 128, 256, 512]
    depths: list[int] = [2, 2, 2, 2]
    layer_type: Literal["basic", "bottleneck"] = "basic"
    freeze: Literal["none", "stem", "all"] = Field("none", description="which backbone parameters stay fixed")


class ModelConfig(_Section):
    family: str = Field("deformable_detr", description="a registered model family (detrdistill.models.families)")
    pretrained: str | None = Field(None, description="checkpoint to start from: local dir or hub id (e.g. "
                                   "SenseTime/deformable-detr); other classes than the dataset's are re-headed by name")
    num_queries: int = Field(100, ge=1)
    d_model: int = Field(256, ge=8)
    encoder_layers: int = Field(3, ge=0)
    decoder_layers: int = Field(6, ge=1)
    ffn_dim: int = Field(1024, ge=8)
    num_heads: int = Field(8, ge=1)
    num_feature_levels: int = Field(4, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    with_box_refine: bool = False
    two_stage: bool = False
    backbone: BackboneConfig = BackboneConfig()
    hf_overrides: dict[str, Any] = Field({}, description="extra keys passed to the transformers config")

    @field_validator("family")
    @classmethod
    def _registered_family(cls, v: str) -> str:
        names = _family_names()
        if v not in names:
            raise ValueError(f"unknown model family; supported: {', '.join(names)}")
        return v

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelConfig":
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        return self

    @model_validator(mode="after")
    def _one_source_of_weights(self) -> "ModelConfig":
        if self.pretrained and self.backbone.pretrained:
            raise ValueError("model.pretrained (a whole detector) and model.backbone.pretrained exclude each other; "
                             "set only one")
        return self


class LossConfig(_Section):
    """How the student is trained: its family's own recipe, or the set criterion (Hungarian costs and loss weights
    below, Deformable DETR defaults)."""
    recipe: Literal["family", "set"] = Field(
        "family", description="'family' = the family's own transformers training loss where it has one (RT-DETR / "
        "D-FINE / DEIMv2: denoising groups and varifocal / matchability-aware classification; D-FINE's FGL and DDF; "
        "LW-DETR / RF-DETR: grouped one-to-many queries; its own weights and matcher from the model config), the set "
        "criterion below for every other family; 'set' = the set criterion for every family")
    class_cost: float = 2.0
    bbox_cost: float = 5.0
    giou_cost: float = 2.0
    class_weight: float = 2.0
    bbox_weight: float = 5.0
    giou_weight: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    aux_loss: bool = True

    @model_validator(mode="before")
    @classmethod
    def _removed_criterion_key(cls, raw: Any) -> Any:
        """``loss.criterion`` (never read) was removed; configs saved with its only working value still load."""
        if isinstance(raw, dict) and "criterion" in raw:
            if raw["criterion"] != "ours":
                raise ValueError("loss.criterion was removed: the set criterion is always detrdistill's own")
            raw = {k: v for k, v in raw.items() if k != "criterion"}
        return raw


class OptimConfig(_Section):
    lr: float = Field(2e-4, gt=0)
    backbone_lr_mult: float = Field(0.1, ge=0)
    linear_proj_lr_mult: float = Field(0.1, ge=0, description="lr multiplier for sampling offsets / reference points")
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float = Field(0.1, ge=0, description="max grad norm; 0 disables")
    warmup_steps: int = Field(50, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    step_at: float = Field(0.8, gt=0, lt=1, description="step schedule: fraction of training where lr drops")
    step_gamma: float = Field(0.1, gt=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="cosine floor as a fraction of lr")


class TrainConfig(_Section):
    output_dir: str = "runs/default"
    seed: int = 0
    epochs: int | None = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1, description="overrides epochs when set")
    time_budget_min: float | None = Field(None, gt=0, description="stop (and checkpoint) after this many minutes")
    batch_size: int = Field(4, ge=1, description="images per process")
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v: Any) -> Any:  # `mixed_precision: no` in a YAML file parses as False
        return "no" if v is False else v
    log_every: int = Field(10, ge=1)
    eval_every_epochs: int = Field(1, ge=0, description="0 evaluates only at the end")
    checkpoint_every_steps: int = Field(0, ge=0, description="0 checkpoints at each epoch end only")
    snapshot_steps: list[int] = Field(
        [], description="steps at which the deployable model is also kept, in <output_dir>/snapshots/step-N (e.g. "
        "teachers of increasing strength from one schedule); a snapshot of a resumed run's earlier steps stays")
    keep_checkpoints: int = Field(2, ge=1)
    device: Literal["auto", "cpu"] = "auto"
    progress: bool = True
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "trackio",
                            "swanlab", "all"]] = Field(
        [], description="experiment trackers beside metrics.jsonl, through accelerate (e.g. [tensorboard]; "
        "'none' = none); files under <output_dir>/tracking")

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to_list(cls, v: Any) -> Any:  # `report_to: tensorboard` / `none` on the command line or in YAML
        if v is None or v == "none" or v is False:
            return []
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip() and s.strip() != "none"]
        return v


class LogitsDistillConfig(_Section):
    enabled: bool = True
    variant: Literal["all", "pos_neg"] = Field("all", description="'all' = official code, 'pos_neg' = paper")
    class_weight: float = 1.0
    bbox_weight: float = 5.0
    giou_weight: float = 2.0
    neg_weight: float = Field(1.0, ge=0, description="pos_neg: weight of the background term on teacher negatives")
    pos_threshold: float = Field(0.5, ge=0, le=1, description="pos_neg on images without GT: teacher max class "
                                 "probability >= this makes a positive")


class FeatureDistillConfig(_Section):
    enabled: bool = True
    source: Literal["encoder_inputs", "encoder_outputs"] = Field(
        "encoder_inputs", description="'encoder_inputs' = official code, 'encoder_outputs' = paper")
    weight: float = 1.0
    top_k: int = Field(100, ge=1)
    mask_floor: float = Field(0.01, gt=0, le=1)
    normalize: Literal["auto", "none", "group"] = Field(
        "auto", description="'group' = parameter-free GroupNorm on both sides before the MSE (feature and fitnet terms); "
        "'auto' = 'group' when a model's encoder_inputs have no normalisation layer (DETR, Conditional DETR, "
        "DAB-DETR: their values reach the hundreds and the loss would swamp the detection loss), else 'none' "
        "(the official code's features are GroupNorm'ed already)")


class QueryPriorDistillConfig(_Section):
    enabled: bool = True
    weight: float = 1.0
    reuse_memory: bool = Field(True, description="decode over the student's memory instead of a second encoder pass")


class ContrastiveDistillConfig(_Section):
    enabled: bool = False
    weight: float = 0.2
    temperature: float = Field(0.07, gt=0)
    proj_dim: int = Field(512, ge=8)


class BaselineDistillConfig(_Section):
    enabled: bool = False
    weight: float = 1.0
    temperature: float = Field(1.0, gt=0, description="logit_kd only")


class TeacherMatcherConfig(_Section):
    """Costs of the teacher's own Hungarian matching to the GT (used by the query prior and ``logits.variant=pos_neg``).
    ``class_cost`` unset = by the teacher's class activation: 2 (focal, sigmoid teachers) or 1 (DETR's softmax)."""
    class_cost: float | None = Field(None, ge=0)
    bbox_cost: float = Field(5.0, ge=0)
    giou_cost: float = Field(2.0, ge=0)


TeacherInputMode = Literal["auto", "processor", "student"]  # distill.teacher_input (see teacher_pixels.py)


class DistillConfig(_Section):
    """The ``distill`` section: the teacher, how it is fed and run, and each DETRDistill term with its switch and
    weights (defaults: the official setting: logits, feature and query-prior terms on). Python:
    ``DistillConfig(feature={"weight": 2.0}, query_prior={"enabled": False})``."""
    teacher: str | None = Field(None, description="teacher: local model dir or hub id (ours or any transformers one "
                                "of a supported family; its classes must include the dataset's, mapped by name)")
    teacher_input: TeacherInputMode = Field(
        "auto", description="pixels the teacher is fed, from the student's augmented batch: 'auto' = its processor's "
        "normalisation, and its resizing when that differs from data.eval_size/max_size; 'processor' = always its "
        "processor's normalisation and resizing; 'student' = the student's pixels unchanged")
    teacher_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="teacher forward dtype; unset + train.mixed_precision=bf16 -> bfloat16")
    stage_mapping: Literal["uniform", "last", "final"] = Field(
        "uniform", description="student stage -> teacher stage: 'uniform' = same relative depth (identity for equal "
        "depths, official), 'last' = align the final stages, 'final' = every stage learns from the teacher's last")
    teacher_matcher: TeacherMatcherConfig = TeacherMatcherConfig()
    logits: LogitsDistillConfig = LogitsDistillConfig()
    feature: FeatureDistillConfig = FeatureDistillConfig()
    query_prior: QueryPriorDistillConfig = QueryPriorDistillConfig()
    contrastive: ContrastiveDistillConfig = ContrastiveDistillConfig()
    fitnet: BaselineDistillConfig = BaselineDistillConfig()
    logit_kd: BaselineDistillConfig = BaselineDistillConfig()

    def for_mixed_precision(self, mixed_precision: str) -> "DistillConfig":
        """This config, with the teacher in bf16 when training in bf16 mixed precision (``"bf16"``) and
        ``teacher_dtype`` was not set explicitly (a float32 teacher under a bf16 student would be the slowest part of
        the step); ``"no"`` / ``"fp16"`` leave it as it is."""
        if mixed_precision == "bf16" and "teacher_dtype" not in self.model_fields_set:
            return self.model_copy(update={"teacher_dtype": "bfloat16"})
        return self


class Config(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    distill: DistillConfig = DistillConfig()


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    got = first.get("input")
    got_s = "" if first["type"] == "extra_forbidden" or isinstance(got, dict) else f" (got {got!r})"
    more = f" [+{len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
    return f"{source}: {key}: {msg}{got_s}{more}"


def _parse_value(text: str, key: str = "") -> Any:
    """YAML-parse an override value, except YAML 1.1's yes/no/on/off booleans: ``mixed_precision=no`` means "no".
    Only plain YAML values are read (``safe_load``: a ``!!python/...`` tag is refused); a value that does not
    parse is a one-line :class:`ConfigError` naming the key."""
    if not text.strip():
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = (str(e).strip().splitlines() or ["not valid YAML"])[0]
        raise ConfigError(f"--set {key}={text}: not a valid YAML value ({first}); quote strings, close brackets, "
                          "no tags") from None
    if isinstance(value, bool) and text.strip().lower() not in ("true", "false"):
        return text.strip()
    return value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings (value parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = _parse_value(value, key.strip())
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None), apply overrides and validate."""
    raw: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"{p}: not a text file; expected a YAML config") from None
        except OSError as e:
            raise ConfigError(f"{p}: cannot read the config ({e.strerror or type(e).__name__})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
    apply_overrides(raw, overrides or [])
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from None


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML atomically (:func:`~detrdistill.io_atomic.write_atomic`)."""
    from .io_atomic import write_atomic
    write_atomic(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
