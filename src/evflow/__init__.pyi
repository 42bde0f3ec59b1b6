"""Type stub of evflow's lazily imported public API (see __init__.py); keep in step with _EXPORTS."""

from . import gates as gates
from . import metrics as metrics
from . import synth as synth
from . import synth_bleaching as synth_bleaching
from . import transforms as transforms
from .backend import (
    gpu_available as gpu_available,
)
from .backend import (
    resolve_backend as resolve_backend,
)
from .errors import (
    BackendError as BackendError,
)
from .errors import (
    CalibrationError as CalibrationError,
)
from .errors import (
    ConfigError as ConfigError,
)
from .errors import (
    EvflowError as EvflowError,
)
from .errors import (
    FCSError as FCSError,
)
from .errors import (
    GatingError as GatingError,
)
from .errors import (
    ImageError as ImageError,
)
from .flow.calibration import (
    MESFCalibration as MESFCalibration,
)
from .flow.calibration import (
    ScatterCalibration as ScatterCalibration,
)
from .flow.calibration import (
    analysed_volume_ul as analysed_volume_ul,
)
from .flow.calibration import (
    calibrate_mesf as calibrate_mesf,
)
from .flow.calibration import (
    calibrate_scatter as calibrate_scatter,
)
from .flow.calibration import (
    concentration_per_ml as concentration_per_ml,
)
from .flow.calibration import (
    fit_scatter_gain as fit_scatter_gain,
)
from .flow.calibration import (
    size_gate as size_gate,
)
from .flow.controls import (
    evaluate_controls as evaluate_controls,
)
from .flow.controls import (
    miflowcyt_ev_items as miflowcyt_ev_items,
)
from .flow.controls import (
    subtract_buffer_counts as subtract_buffer_counts,
)
from .flow.controls import (
    threshold_from_control as threshold_from_control,
)
from .flow.gatingml import (
    read_gatingml as read_gatingml,
)
from .flow.gatingml import (
    write_gatingml as write_gatingml,
)
from .flow.phenotypes import (
    count_phenotypes as count_phenotypes,
)
from .flow.phenotypes import (
    density2d as density2d,
)
from .imaging.background import (
    estimate_flat as estimate_flat,
)
from .imaging.background import (
    subtract_image_background as subtract_image_background,
)
from .imaging.bleaching import (
    BleachingSteps as BleachingSteps,
)
from .imaging.bleaching import (
    count_bleaching_steps as count_bleaching_steps,
)
from .imaging.camera import (
    Camera as Camera,
)
from .imaging.colocalize import (
    colocalize as colocalize,
)
from .imaging.copies import (
    UnitBrightness as UnitBrightness,
)
from .imaging.copies import (
    copies_per_vesicle as copies_per_vesicle,
)
from .imaging.copies import (
    copies_summary as copies_summary,
)
from .imaging.copies import (
    fluorophores_from_mesf as fluorophores_from_mesf,
)
from .imaging.copies import (
    unit_brightness as unit_brightness,
)
from .imaging.count import (
    count_vesicles as count_vesicles,
)
from .imaging.count import (
    thresholds_from_control as thresholds_from_control,
)
from .imaging.detect import (
    detect_spots as detect_spots,
)
from .imaging.register import (
    ChannelRegistration as ChannelRegistration,
)
from .imaging.register import (
    register_channels as register_channels,
)
from .imaging.traces import (
    extract_traces as extract_traces,
)
from .io.fcs import (
    FCSSample as FCSSample,
)
from .io.fcs import (
    read_fcs as read_fcs,
)
from .io.fcs import (
    write_fcs as write_fcs,
)
from .io.images import (
    read_images as read_images,
)
from .pipeline.config import (
    load_experiment as load_experiment,
)
from .pipeline.run import (
    run as run,
)

__version__: str

__all__ = [
    "__version__",
    "EvflowError",
    "FCSError",
    "GatingError",
    "CalibrationError",
    "ImageError",
    "ConfigError",
    "BackendError",
    "read_fcs",
    "write_fcs",
    "FCSSample",
    "read_images",
    "read_gatingml",
    "write_gatingml",
    "run",
    "load_experiment",
    "count_phenotypes",
    "density2d",
    "calibrate_mesf",
    "MESFCalibration",
    "calibrate_scatter",
    "fit_scatter_gain",
    "ScatterCalibration",
    "size_gate",
    "analysed_volume_ul",
    "concentration_per_ml",
    "evaluate_controls",
    "threshold_from_control",
    "subtract_buffer_counts",
    "miflowcyt_ev_items",
    "detect_spots",
    "Camera",
    "count_vesicles",
    "thresholds_from_control",
    "register_channels",
    "ChannelRegistration",
    "colocalize",
    "estimate_flat",
    "subtract_image_background",
    "count_bleaching_steps",
    "BleachingSteps",
    "extract_traces",
    "unit_brightness",
    "UnitBrightness",
    "copies_per_vesicle",
    "copies_summary",
    "fluorophores_from_mesf",
    "resolve_backend",
    "gpu_available",
    "gates",
    "transforms",
    "synth",
    "synth_bleaching",
    "metrics",
]
