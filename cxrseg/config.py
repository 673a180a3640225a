"""Settings: one pydantic-settings object, a section per component, built once at the CLI edge.

The schema lives here; cxrseg.config_sources builds it from a TOML file, the environment, flags and checkpoints."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Device = Literal["auto", "cpu", "cuda", "mps"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
KeepBy = Literal["area", "confident_area"]  # which parts the clean-up keeps: the largest, or the surest
Backend = Literal["auto", "torch", "onnxruntime"]


class Section(BaseModel):
    # inf/nan are never a sensible setting, and a saved `inf` becomes JSON null that no later run can read
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DataSettings(Section):
    """Where the dataset lives and how it is split."""

    root: Annotated[list[Path], NoDecode] = Field(
        [Path("data/chest-segmentation-image")],
        min_length=1,
        validate_default=True,
        description="one or more dataset folders",
    )
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of each folder's image/ kept for validation")
    split_seed: int = 0
    split_rule: Literal["name", "shuffle"] = Field(
        "name",
        description="name: each pair's side fixed by a seeded hash of its file name, so adding or removing pairs "
        "never moves a trained-on film into val; shuffle: the rule of checkpoints that record none",
    )

    @field_validator("root", mode="before")
    @classmethod
    def _one_or_more(cls, value: object) -> object:
        return [value] if isinstance(value, str | Path) else value

    @field_validator("root")
    @classmethod
    def _absolute(cls, value: list[Path]) -> list[Path]:
        """Made absolute (links not resolved, `~` expanded as a shell would) where the settings are made, so that a
        checkpoint's settings still name the folders when read from another working directory."""
        return [path.expanduser().absolute() for path in value]


class PreprocessSettings(Section):
    """How an X-ray becomes a model input; stored in every checkpoint."""

    image_size: int = Field(128, ge=32, le=2048)
    trim_border: bool = Field(
        False, description="crop rows and columns of one grey (a canvas, a frame, padding) off the edges first"
    )

    @field_validator("image_size")
    @classmethod
    def _multiple_of_16(cls, value: int) -> int:
        if value % 16:
            raise ValueError(f"must be a multiple of 16, got {value}; try {16 * round(value / 16)}")
        return value


class ModelSettings(Section):
    """U-Net shape: depth = number of poolings, base_channels doubles per level."""

    depth: int = Field(4, ge=1, le=6)
    base_channels: int = Field(16, ge=4, le=128)


class AugmentSettings(Section):
    """Batched tensor augmentation applied during training; a probability of 0 switches a group off."""

    enabled: bool = True
    rotate_degrees: float = Field(15.0, ge=0, le=45)
    zoom_min: float = Field(0.7, gt=0.2, le=1, description="below 1: the film shrunk inside wide borders")
    zoom_max: float = Field(1.4, ge=1, le=3, description="above 1: crops that cut off apices or bases")
    aspect: float = Field(0.15, ge=0, lt=1, description="log-range of the height/width stretch")
    shift: float = Field(0.1, ge=0, lt=0.5)
    border_p: float = Field(0.5, ge=0, le=1, description="zoom-out borders drawn as film rather than padding")
    letterbox_p: float = Field(0.2, ge=0, le=1, description="films of another aspect ratio, fitted with padding")
    intensity_p: float = Field(0.8, ge=0, le=1, description="gamma, sigmoid window, local contrast, equalisation")
    gamma: float = Field(0.6, ge=0, lt=2, description="log-range of the gamma")
    acquisition_p: float = Field(0.5, ge=0, le=1, description="low resolution, blur, noise")
    marks_p: float = Field(0.4, ge=0, le=1, description="burnt-in text, arrows, lines, rulers, ECG leads; JPEG")
    pathology_p: float = Field(0.5, ge=0, le=1, description="consolidation, effusion, ground glass in the lung")
    gas_bubble_p: float = Field(0.0, ge=0, le=1, description="gastric bubble under the left lung; off: no gain shown")
    clean_p: float = Field(0.0, ge=0, le=1, description="share of films left as they are: no group applied")


SCRATCH_LR = 1e-2  # train.lr when unset and not fine-tuning


class TrainSettings(Section):
    """Optimisation, schedule and run bookkeeping."""

    epochs: int = Field(3, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float | None = Field(None, gt=0, description="peak learning rate of AdamW; unset: see peak_lr")
    weight_decay: float = Field(1e-4, ge=0)
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    dice_weight: float = Field(1.0, ge=0)
    hard_pixel_fraction: float = Field(
        1.0, gt=0, le=1, description="share of the scored pixels, those with the largest loss, whose BCE counts; 1: all"
    )
    seed: int = Field(0, ge=-(2**53), le=2**53)  # torch seeds its generators with seed x 1009 + rank, in 64 bits
    device: Device = "auto"
    precision: Precision = "auto"
    channels_last: bool = True
    runs_dir: Path = Path("runs")
    previews: int = Field(4, ge=0, description="validation pictures saved per epoch")
    save_images: bool = Field(False, description="after training: best checkpoint's validation pictures and report")
    patience: int | None = Field(None, ge=1)
    max_time: float | None = Field(None, gt=0, description="seconds; accepts 90s, 30m, 2h, 1h30m")
    deterministic: bool = False
    ema_decay: float = Field(
        0.0, ge=0, lt=1, description="per-step decay of a moving average of the weights, validated and saved; 0: off"
    )
    init_from: str | None = Field(None, description="start from `pretrained` (the bundled model) or a checkpoint file")

    @property
    def peak_lr(self) -> float:
        """The learning rate asked for; unset, 1e-2 from scratch and a tenth of it when starting from a trained model
        (`init_from`): at the from-scratch rate one epoch on a small set undoes much of what the start had learnt."""
        if self.lr is not None:
            return self.lr
        return SCRATCH_LR / 10 if self.init_from else SCRATCH_LR

    @field_validator("init_from")
    @classmethod
    def _absolute_init(cls, value: str | None) -> str | None:
        """A checkpoint path is made absolute where the settings are made, so that a run's settings.json names
        it from any working directory. An empty value (`CXRSEG_TRAIN__INIT_FROM=`) is no checkpoint."""
        if value is None or not value.strip():
            return None
        return value if value == "pretrained" else str(Path(value).expanduser().absolute())

    @field_validator("runs_dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        """`~/runs` from a config file or a quoted flag is the home folder's, never a folder named `~` here."""
        return value.expanduser()

    @field_validator("max_time", mode="before")
    @classmethod
    def _parse_duration(cls, value: object) -> object:
        if not isinstance(value, str) or not value.strip():
            return value
        text = value.strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return float(text)
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
        if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
            raise ValueError(f"cannot read duration {value!r}; use seconds or forms like 90s, 30m, 2h, 1h30m")
        return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


class InferenceSettings(Section):
    """Shared by evaluate and predict."""

    batch_size: int = Field(16, ge=1)
    threshold: float = Field(0.5, gt=0, lt=1)
    postprocess: bool = True
    min_component_fraction: float = Field(0.002, ge=0, lt=1)
    keep_by: KeepBy = Field(
        "area", description="which two parts the clean-up keeps: the largest, or those with most pixels >= 0.9"
    )
    tta: bool = False
    trim_border: bool | None = Field(
        None, description="crop uniform margins before the model; None: as the checkpoint's preprocess.trim_border"
    )
    device: Device = "auto"
    backend: Backend = Field("auto", description="torch, onnxruntime (CPU), or auto: see cxrseg.backend")
    overlay_size: int = Field(1024, ge=16)  # predict's overlays: longest side in pixels (larger X-rays shrink)


class DownloadSettings(Section):
    """Where datasets come from."""

    kaggle_dataset: str = "newra008/chest-segmentation-image"
    retries: int = Field(5, ge=0)
    timeout: float = Field(
        30.0, gt=0, le=86400, description="seconds one connection or read may wait for the server (at most a day)"
    )
    min_speed: int = Field(
        1024, ge=0, description="bytes/s a download must average over each speed_window, else it is retried"
    )
    speed_window: float = Field(60.0, gt=0, description="seconds over which min_speed is averaged")
    deadline: float = Field(6 * 3600.0, gt=0, description="seconds the whole download may take, retries included")
    max_download_bytes: int = Field(
        2 * 1024**3, gt=0, description="largest archive fetched, with or without a Content-Length"
    )
    max_extract_bytes: int = Field(8 * 1024**3, gt=0, description="largest total size unpacked from an archive")
    max_extract_ratio: float = Field(
        50.0, ge=1, description="largest unpacked size as a multiple of the archive's size (X-rays barely compress)"
    )
    max_extract_files: int = Field(
        200_000, gt=0, description="most entries (files and folders) unpacked from an archive"
    )


class Settings(BaseSettings):
    """Every knob of cxrseg. Precedence: CLI flags > CXRSEG_* env > config file > defaults."""

    # an empty variable (`CXRSEG_DEBUG=`, `CXRSEG_TRAIN__PATIENCE=$UNSET`) is an unset one, as for the shell
    model_config = SettingsConfigDict(
        env_prefix="CXRSEG_", env_nested_delimiter="__", env_ignore_empty=True, extra="forbid", allow_inf_nan=False
    )

    data: DataSettings = Field(default_factory=DataSettings)  # built when used: folders follow the working dir
    preprocess: PreprocessSettings = PreprocessSettings()
    model: ModelSettings = ModelSettings()
    augment: AugmentSettings = AugmentSettings()
    train: TrainSettings = TrainSettings()
    inference: InferenceSettings = InferenceSettings()
    download: DownloadSettings = DownloadSettings()
    debug: bool = False

    @model_validator(mode="after")
    def _size_fits_depth(self) -> Settings:
        factor = 2**self.model.depth
        size = self.preprocess.image_size
        if size % factor or size // factor < 2:
            fit = max(2 * factor, factor * round(size / factor))
            raise ValueError(
                f"preprocess.image_size {size} does not fit model.depth {self.model.depth}: it must be a multiple "
                f"of 2**depth = {factor} and at least {2 * factor}; use --image-size {fit} or a smaller --depth"
            )
        return self
