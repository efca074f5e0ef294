"""Typed, validated run configuration: YAML file + ``--set key=value`` overrides.

Every section is a pydantic model with ``extra="forbid"``, so an unknown key or a value of the wrong
type is rejected before any work starts, with a one-line :class:`ConfigError` naming the key. What only a
layer above knows is checked there: ``model.family`` by the models layer
(:func:`detrdistill.models.family_index.check_family`; the CLI calls it right after loading, naming the key's origin).

    cfg = load_config("configs/synth.yaml", overrides=["train.epochs=3", "model.d_model=128"])
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config_origins import Origins, format_validation_error, yaml_key_lines
from .errors import ConfigError



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
    """COCO splits (or the synthetic set), augmentation and loading."""
    train: SplitConfig | None = Field(None, description="training split {ann_file, image_dir}")
    val: SplitConfig | None = Field(None, description="validation split (periodic and final evaluation)")
    test: SplitConfig | None = Field(None, description="test split (`detrdistill eval --split test`)")
    synthetic: bool = Field(False, description="generate the synthetic set into <output_dir>/data if train/val are unset")
    synth_images: int = Field(160, ge=4, description="train images for the synthetic set (val gets a quarter)")
    synth_size: int = Field(256, ge=64, description="side of the synthetic images")
    synth_seed: int = Field(0, description="seed of the synthetic set")
    synth_dir: str | None = Field(None, description="where the synthetic set is written (default <output_dir>/data)")
    defects: Literal["repair", "skip", "error"] = Field(
        "repair",
        description="bad annotations: 'repair' clips boxes to the image and drops zero-area ones, "
        "'skip' drops every annotation with a defect, 'error' refuses to train")
    min_size: list[int] = Field([480, 512, 544, 576, 608], description="training short-side scales (one is drawn per image)")
    max_size: int = Field(800, ge=32, description="longest side after resizing")
    eval_size: int = Field(512, ge=32, description="evaluation short side")
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    crop: float = Field(0.5, ge=0, le=1, description="probability of a random crop before resizing")
    crop_min: float = Field(0.5, gt=0, le=1, description="smallest crop side as a fraction of the image side")
    num_workers: int = Field(2, ge=0, description="data loader processes (0 = in the training process)")
    cache_images: float = Field(
        0.0, ge=0, description="GiB of decoded training images each loader process keeps in memory (0 = none): "
        "identical pixels, each file decoded once per process instead of once per epoch; for small sets on few cores")


class BackboneConfig(_Section):
    """transformers' own ResNet (``ResNetConfig``): random init, or ``pretrained`` weights (whose architecture then
    replaces embedding_size / hidden_sizes / depths / layer_type)."""
    pretrained: str | None = Field(None, description="ResNet to start from: local dir or hub id of a transformers "
                                   "ResNet (e.g. microsoft/resnet-18) or a plain timm one (e.g. timm/resnet50.a1_in1k; "
                                   "timm itself is not needed)")
    embedding_size: int = Field(64, description="channels of the ResNet stem")
    hidden_sizes: list[int] = Field([64, 128, 256, 512], description="channels of each ResNet stage")
    depths: list[int] = Field([2, 2, 2, 2], description="blocks per ResNet stage")
    layer_type: Literal["basic", "bottleneck"] = Field(
        "basic", description="'basic' blocks (ResNet-18/34) or 'bottleneck' blocks (ResNet-50 and deeper)")
    freeze: Literal["none", "stem", "all"] = Field("none", description="which backbone parameters stay fixed")
    batch_norm: Literal["frozen", "train"] = Field(
        "frozen", description="'frozen' = transformers' FrozenBatchNorm2d (fixed statistics: right for pretrained "
        "weights, an identity in a backbone trained from scratch); 'train' = trainable BatchNorm2d with batch "
        "statistics (for a backbone trained from scratch; with freeze 'stem' the stem's norms stay frozen; a saved model "
        "loads back frozen at what it learned)")


class ModelConfig(_Section):
    """The detector: family, sizes, backbone, starting weights."""
    family: str = Field("deformable_detr", description="a registered model family (detrdistill.models.families)")
    pretrained: str | None = Field(None, description="checkpoint to start from: local dir or hub id (e.g. "
                                   "SenseTime/deformable-detr); other classes than the dataset's are re-headed by name")
    num_queries: int = Field(100, ge=1, description="object queries (detection slots per image)")
    d_model: int = Field(256, ge=8, description="transformer width")
    encoder_layers: int = Field(3, ge=0, description="transformer encoder layers")
    decoder_layers: int = Field(6, ge=1, description="transformer decoder layers (distillation stages)")
    ffn_dim: int = Field(1024, ge=8, description="feed-forward width of every transformer layer")
    num_heads: int = Field(8, ge=1, description="attention heads (must divide d_model)")
    num_feature_levels: int = Field(4, ge=1, description="feature maps the transformer reads (multi-scale families)")
    dropout: float = Field(0.0, ge=0, lt=1, description="transformer dropout")
    with_box_refine: bool = Field(False, description="iterative box refinement (families with it, e.g. Deformable DETR)")
    two_stage: bool = Field(False, description="encoder proposals as queries (families with it, e.g. Deformable DETR)")
    backbone: BackboneConfig = Field(BackboneConfig(), description="the ResNet backbone (transformers' own)")
    hf_overrides: dict[str, Any] = Field({}, description="extra keys passed to the transformers config")

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
    class_cost: float = Field(2.0, description="Hungarian matching cost of the class score")
    bbox_cost: float = Field(5.0, description="Hungarian matching cost of the L1 box distance")
    giou_cost: float = Field(2.0, description="Hungarian matching cost of the generalised IoU")
    class_weight: float = Field(2.0, description="weight of the classification loss (focal, or DETR's cross-entropy)")
    bbox_weight: float = Field(5.0, description="weight of the L1 box loss")
    giou_weight: float = Field(2.0, description="weight of the generalised-IoU loss")
    focal_alpha: float = Field(0.25, description="focal loss alpha")
    focal_gamma: float = Field(2.0, description="focal loss gamma")
    aux_loss: bool = Field(True, description="supervise every decoder stage, not only the last")

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
    """AdamW and the learning-rate schedule."""
    lr: float = Field(2e-4, gt=0, description="AdamW learning rate")
    backbone_lr_mult: float = Field(0.1, ge=0, description="lr multiplier for the backbone")
    linear_proj_lr_mult: float = Field(0.1, ge=0, description="lr multiplier for sampling offsets / reference points")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(0.1, ge=0, description="max grad norm; 0 disables")
    warmup_steps: int = Field(50, ge=0, description="steps of linear lr warm-up")
    schedule: Literal["cosine", "step", "constant"] = Field("cosine", description="lr schedule after the warm-up")
    step_at: float = Field(0.8, gt=0, lt=1, description="step schedule: fraction of training where lr drops")
    step_gamma: float = Field(0.1, gt=0, description="step schedule: lr factor at the drop")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="cosine floor as a fraction of lr")


class TrainConfig(_Section):
    """How long to train, the run folder, logging, checkpoints, device."""
    output_dir: str = Field("runs/default", description="run folder: config.yaml, metrics.jsonl, checkpoints/, "
                            "model/, eval.json")
    seed: int = Field(0, description="random seed (initialisation, data order, augmentation)")
    epochs: int | None = Field(10, ge=1, description="passes over the training set")
    max_steps: int | None = Field(None, ge=1, description="overrides epochs when set")
    time_budget_min: float | None = Field(None, gt=0, description="stop (and checkpoint) after this many minutes")
    batch_size: int = Field(4, ge=1, description="images per process")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="autocast dtype on GPUs ('no' = float32)")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v: Any) -> Any:  # `mixed_precision: no` in a YAML file parses as False
        return "no" if v is False else v
    log_every: int = Field(10, ge=1, description="steps between metrics.jsonl lines")
    eval_every_epochs: int = Field(1, ge=0, description="0 evaluates only at the end")
    checkpoint_every_steps: int = Field(0, ge=0, description="0 checkpoints at each epoch end only")
    snapshot_steps: list[int] = Field(
        [], description="steps at which the deployable model is also kept, in <output_dir>/snapshots/step-N (e.g. "
        "teachers of increasing strength from one schedule); a snapshot of a resumed run's earlier steps stays")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept")
    device: Literal["auto", "cpu"] = Field("auto", description="'auto' = what accelerate finds (a GPU if any), 'cpu'")
    progress: bool = Field(True, description="progress bar on stderr (a plain line every 30 s when not a terminal)")
    probe_gradients: bool = Field(True, description="distill: at the first step of a fresh run (and every "
                                  "probe_gradients_every steps), measure each term's gradient against the student's "
                                  "own loss, over all parameters and per module (one extra backward per term each "
                                  "time), log it, warn when a term dominates; metrics.jsonl grad/*")
    probe_gradients_every: int = Field(200, ge=0, description="distill: with probe_gradients, measure it again every "
                                       "N steps (0: at the first step only): a term can take a module of the student "
                                       "over later (per-module ratios, grad/<term>_ratio/<module>)")
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
    """The Hungarian-matching logits term: student predictions matched to the teacher's, class + box losses."""
    enabled: bool = Field(True, description="use the logits term")
    variant: Literal["all", "pos_neg"] = Field("all", description="'all' = official code, 'pos_neg' = paper")
    class_weight: float = Field(1.0, description="weight of the class-score distillation")
    bbox_weight: float = Field(5.0, description="weight of the L1 box distillation")
    giou_weight: float = Field(2.0, description="weight of the generalised-IoU box distillation")
    neg_weight: float = Field(1.0, ge=0, description="pos_neg: weight of the background term on teacher negatives")
    pos_threshold: float = Field(0.5, ge=0, le=1, description="pos_neg on images without GT: teacher max class "
                                 "probability >= this makes a positive")
    class_loss: Literal["bce", "quality_focal"] = Field(
        "bce", description="'bce' = official soft BCE; 'quality_focal' = soft BCE x |p - q|^focal_gamma, normalised by "
        "the matched teacher scores' sum (sigmoid models; not in the paper)")
    focal_gamma: float = Field(2.0, ge=0, description="class_loss=quality_focal: the exponent of |p - q|")
    box_weighting: Literal["uniform", "teacher_score"] = Field(
        "uniform", description="'uniform' = official (every matched pair counts 1); 'teacher_score' = L1 + GIoU of "
        "each pair weighted by the teacher's max class probability of its box, normalised by their sum")


class FeatureDistillConfig(_Section):
    """The target-aware feature term: MSE of the feature maps under a mask built from the teacher's queries."""
    enabled: bool = Field(True, description="use the feature term")
    source: Literal["encoder_inputs", "encoder_outputs"] = Field(
        "encoder_inputs", description="'encoder_inputs' = official code, 'encoder_outputs' = paper")
    weight: float = Field(1.0, description="weight of the feature term")
    top_k: int = Field(100, ge=1, description="teacher queries (by quality score) that build the mask")
    mask_floor: float = Field(0.01, gt=0, le=1, description="smallest mask weight (background still counts a little)")
    normalize: Literal["auto", "none", "group"] = Field(
        "auto", description="'group' = parameter-free GroupNorm on both sides before the MSE (feature and fitnet terms); "
        "'auto' = 'group' when a model's encoder_inputs have no normalisation layer (DETR, Conditional DETR, "
        "DAB-DETR: their values reach the hundreds and the loss would swamp the detection loss), else 'none' "
        "(the official code's features are GroupNorm'ed already)")


class QueryPriorDistillConfig(_Section):
    """The query-prior term: the teacher's queries, projected, decoded by the student with the teacher's assignment."""
    enabled: bool = Field(True, description="use the query-prior term")
    weight: float = Field(1.0, description="weight of the query-prior term")
    reuse_memory: bool = Field(True, description="decode over the student's memory instead of a second encoder pass")
    group_loss: Literal["set", "set_distributions", "family"] = Field(
        "family", description="how the group is supervised (with the teacher's fixed assignments) when the student is "
        "trained by its family's recipe (loss.recipe=family: RT-DETR, D-FINE, DEIMv2): 'family' = the family's own "
        "loss, as its own queries get it (RT-DETR / D-FINE: varifocal, DEIMv2: matchability-aware, + L1 + GIoU "
        "[+ FGL + DDF]; query_prior_vfl / _mal / _bbox / _giou / _fgl / _ddf); 'set' = the set criterion (focal + L1 "
        "+ GIoU; the official code); 'set_distributions' = the set criterion plus, for a student whose boxes are "
        "distributions (D-FINE, DEIMv2), the family's FGL + DDF. Other students (and loss.recipe=set) use the set "
        "criterion whatever this says")
    teacher_predictions_weight: float = Field(
        0.0, ge=0, description="consistent-query distillation (KD-DETR's consistent distillation points; not in "
        "DETRDistill): each group slot's predictions at each stage are also distilled toward the teacher's own "
        "predictions for that same query at the mapped stage, slot for slot (no matching), with the logits term's "
        "class loss, box weighting and weights (distill.logits.class_loss / box_weighting / class_weight / "
        "bbox_weight / giou_weight) times this; logged as query_kd_cls / _bbox / _giou; 0 = off (official)")
    reference: Literal["teacher_boxes", "learned"] = Field(
        "teacher_boxes", description="a student whose decoder starts from boxes (RT-DETR, D-FINE, AdaMixer, ...) "
        "under a teacher whose queries carry none (DETR, Deformable DETR): 'teacher_boxes' = the box the teacher's "
        "first decoder stage predicts for each query on the image; 'learned' = a trainable Linear from the teacher's "
        "query embedding (starts untrained)")

    @model_validator(mode="before")
    @classmethod
    def _renamed_family_losses(cls, raw: Any) -> Any:
        """``family_losses`` (889e725 only) became ``group_loss``: true = ``set_distributions``, false = ``set``; a
        ``group_loss`` given too (e.g. ``--set`` on a saved config) wins."""
        if isinstance(raw, dict) and "family_losses" in raw:
            old = raw["family_losses"]
            if not isinstance(old, bool):
                raise ValueError(f"distill.query_prior.family_losses: {old!r} is not true / false (its new name: "
                                 "group_loss = set_distributions / set)")
            raw = {k: v for k, v in raw.items() if k != "family_losses"}
            raw.setdefault("group_loss", "set_distributions" if old else "set")
        return raw


class ContrastiveDistillConfig(_Section):
    """The paper's optional contrastive query term (off in the official code)."""
    enabled: bool = Field(False, description="use the contrastive term")
    weight: float = Field(0.2, description="weight of the contrastive term")
    temperature: float = Field(0.07, gt=0, description="softmax temperature")
    proj_dim: int = Field(512, ge=8, description="width of the projection heads")


class BaselineDistillConfig(_Section):
    """A baseline method for comparison (``fitnet``: feature MSE; ``logit_kd``: KL of matched class scores)."""
    enabled: bool = Field(False, description="use this baseline term")
    weight: float = Field(1.0, description="weight of the term")
    temperature: float = Field(1.0, gt=0, description="logit_kd only")


class TeacherMatcherConfig(_Section):
    """Costs of the teacher's own Hungarian matching to the GT (used by the query prior and ``logits.variant=pos_neg``).
    ``class_cost`` unset = by the teacher's class activation: 2 (focal, sigmoid teachers) or 1 (DETR's softmax)."""
    class_cost: float | None = Field(None, ge=0, description="class cost; unset = 2 (sigmoid teachers) or 1 (softmax)")
    bbox_cost: float = Field(5.0, ge=0, description="L1 box cost")
    giou_cost: float = Field(2.0, ge=0, description="generalised-IoU cost")


TeacherInputMode = Literal["auto", "processor", "student"]  # distill.teacher_input (see teacher_pixels.py)


class DistillConfig(_Section):
    """The ``distill`` section: the teacher, how it is fed and run, and each DETRDistill term with its switch and
    weights (defaults: the official setting: logits, feature and query-prior terms on). Python:
    ``DistillConfig(feature={"weight": 2.0}, query_prior={"enabled": False})``."""
    teacher: str | None = Field(None, description="teacher: local model dir or hub id (ours or any transformers one "
                                "of a supported family; its classes must include the dataset's, mapped by name)")
    teacher_input: TeacherInputMode = Field(
        "auto", description="pixels the teacher is fed, from the student's augmented batch: 'auto' = its processor's "
        "normalisation, and its resizing when that differs from data.eval_size/max_size, never enlarging an image "
        "(smaller ones keep the student's size); 'processor' = always its processor's normalisation and resizing, "
        "enlarging included (a hub teacher's 800 x 1333: slow on a CPU); 'student' = the student's pixels unchanged")
    teacher_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="teacher forward dtype; unset + train.mixed_precision=bf16 -> bfloat16")
    stage_mapping: Literal["uniform", "last", "final"] = Field(
        "uniform", description="student stage -> teacher stage: 'uniform' = same relative depth (identity for equal "
        "depths, official), 'last' = align the final stages, 'final' = every stage learns from the teacher's last")
    teacher_matcher: TeacherMatcherConfig = TeacherMatcherConfig()
    warmup_steps: int = Field(
        0, ge=0, description="the distillation terms ramp linearly from 0 to their full weight over the first N "
        "training steps (the student's own loss is never scaled); 0 = full weight from the first step (official)")
    decay: Literal["none", "linear", "cosine"] = Field(
        "none", description="after the warm-up the distillation terms fall to 0 at distill.stop_at: 'linear' or "
        "'cosine'; 'none' = full weight until then (official)")
    stop_at: float = Field(
        1.0, gt=0, le=1, description="fraction of the training steps after which the student trains alone: no "
        "teacher forward, no distillation term (the rest of the run costs what the student alone costs); "
        "1 = distil to the end (official)")
    max_term_ratio: float = Field(
        0.0, ge=0, description="cap on each term's pull on the update: every distill.term_ratio_every steps the "
        "gradient of each term and of the student's own loss are measured on the step's batch (one extra backward "
        "each), and a term whose gradient norm exceeds this multiple of the student's own is down-weighted to it "
        "until the next measurement (detrdistill's engine, one process); 0 = no cap (official)")
    term_ratio_every: int = Field(
        50, ge=1, description="with distill.max_term_ratio: steps between two measurements of the terms' gradients")
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
    """A whole run: sections data, model, loss, optim, train, distill."""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    distill: DistillConfig = DistillConfig()


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


def apply_overrides(raw: dict, overrides: list[str], origins: Origins | None = None,
                    labels: list[str] | None = None) -> dict:
    """Apply ``a.b.c=value`` strings (value parsed as YAML) to a nested dict, in place; each key set is recorded in
    ``origins`` under its label (default ``--set a.b.c=value``)."""
    for i, item in enumerate(overrides):
        label = labels[i] if labels and i < len(labels) and labels[i] else f"--set {item}"
        if "=" not in item:
            raise ConfigError(f"{label}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        node = raw
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{label}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = _parse_value(value, key)
        if origins is not None:
            origins.add_override(key, label)
    return raw


def read_config(path: str | Path | None = None, overrides: list[str] | None = None,
                labels: list[str] | None = None, name: str | None = None) -> tuple[dict, Origins]:
    """The raw (unvalidated) config of YAML file ``path`` + ``overrides``, and where each key came from
    (:class:`~detrdistill.config_origins.Origins`; ``labels`` name the overrides, default ``--set KEY=VALUE``;
    ``name``: how messages call the file, default its path)."""
    raw: dict = {}
    origins = Origins()
    if path is not None:
        p = Path(path)
        origins.file = name or str(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            text = p.read_text(encoding="utf-8")
            raw = yaml.safe_load(text) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"{p}: not a text file; expected a YAML config") from None
        except OSError as e:
            raise ConfigError(f"{p}: cannot read the config ({e.strerror or type(e).__name__})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{where}: not valid YAML ({problem})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
        origins.file_lines = yaml_key_lines(text)
    apply_overrides(raw, overrides or [], origins, labels)
    return raw, origins


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                labels: list[str] | None = None, name: str | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None), apply overrides and validate. A problem is one
    :class:`ConfigError` line naming where the key came from (``file:line`` or ``--set ...``) and, for an unknown key,
    the nearest valid one."""
    return load_config_with_origins(path, overrides, labels, name)[0]


def load_config_with_origins(path: str | Path | None = None, overrides: list[str] | None = None,
                             labels: list[str] | None = None, name: str | None = None) -> tuple[Config, Origins]:
    """:func:`load_config`, and where each key was set."""
    raw, origins = read_config(path, overrides, labels, name)
    try:
        return Config.model_validate(raw), origins
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, Config, origins)) from None


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML atomically (:func:`~detrdistill.io_atomic.write_atomic`)."""
    from .io_atomic import write_atomic
    write_atomic(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
