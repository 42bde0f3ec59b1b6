"""Type stub of evflow's lazily imported public API (see __init__.py); keep in step with _EXPORTS."""

from . import (
    gates as gates,
    metrics as metrics,
    synth as synth,
    transforms as transforms,
)
from .backend import (
    gpu_available as gpu_available,
    resolve_backend as resolve_backend,
)
from .errors import (
    BackendError as BackendError,
    CalibrationError as CalibrationError,
    ConfigError as ConfigError,
    EvflowError as EvflowError,
    FCSError as FCSError,
    GatingError as GatingError,
    ImageError as ImageError,
)
from .flow.calibration import (
    BeadKit as BeadKit,
    MESFCalibration as MESFCalibration,
    ScatterCalibration as ScatterCalibration,
    analysed_volume_ul as analysed_volume_ul,
    bead_kit as bead_kit,
    calibrate_mesf as calibrate_mesf,
    calibrate_scatter as calibrate_scatter,
    concentration_per_ml as concentration_per_ml,
    fit_scatter_gain as fit_scatter_gain,
    list_bead_kits as list_bead_kits,
    size_gate as size_gate,
)
from .flow.controls import (
    evaluate_controls as evaluate_controls,
    miflowcyt_ev_items as miflowcyt_ev_items,
    subtract_buffer_counts as subtract_buffer_counts,
    threshold_from_control as threshold_from_control,
)
from .flow.export import (
    export_fcs as export_fcs,
)
from .flow.flowjo import (
    read_flowjo as read_flowjo,
)
from .flow.gatingml import (
    read_gatingml as read_gatingml,
    write_gatingml as write_gatingml,
)
from .flow.phenotypes import (
    count_phenotypes as count_phenotypes,
    density2d as density2d,
)
from .imaging.background import (
    estimate_flat as estimate_flat,
    subtract_image_background as subtract_image_background,
)
from .imaging.bleaching import (
    BleachingSteps as BleachingSteps,
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
    copies_per_vesicle as copies_per_vesicle,
    copies_summary as copies_summary,
    fluorophores_from_mesf as fluorophores_from_mesf,
    unit_brightness as unit_brightness,
)
from .imaging.count import (
    count_vesicles as count_vesicles,
    thresholds_from_control as thresholds_from_control,
)
from .imaging.detect import (
    detect_spots as detect_spots,
)
from .imaging.register import (
    ChannelRegistration as ChannelRegistration,
    register_channels as register_channels,
)
from .imaging.traces import (
    extract_traces as extract_traces,
)
from .io.fcs import (
    FCSSample as FCSSample,
    read_fcs as read_fcs,
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
    "read_flowjo",
    "export_fcs",
    "run",
    "load_experiment",
    "count_phenotypes",
    "density2d",
    "calibrate_mesf",
    "MESFCalibration",
    "bead_kit",
    "list_bead_kits",
    "BeadKit",
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
    "metrics",
]
