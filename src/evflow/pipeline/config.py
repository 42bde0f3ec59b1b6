"""The experiment file: schema, loading and validation.

An experiment is one TOML (or YAML) file; paths in it are relative to the
file.  Everything is checked before any computation, and every problem is
reported at once (file, key, what was found, what was expected) in one
:class:`~evflow.errors.ConfigError`.

Layout (all sections but ``[[samples]]`` optional)::

    [experiment]
    name = "EV study 12"
    output = "results"               # output folder (default: "<stem>_results")
    backend = "auto"                 # auto | numpy | cupy

    [flow]
    scatter_channel = "SSC-H"
    markers = { "FL1-H" = "CD63", "FL2-H" = "EpCAM" }   # channel -> marker
    flow_rate_ul_per_min = 3.0       # or volume_ul per sample, or $VOL
    chunk_events = 262144
    data_offsets = "auto"            # auto | header | text: where DATA lies when HEADER and TEXT disagree

    [flow.calibration.fluorescence]  # MESF/MEFL beads
    file = "beads/mesf.fcs"
    channel = "FL1-H"
    values = [0, 792, 2079, 6588, 16471, 47497, 137049, 271647]
    units = "MESF"

    [flow.calibration.size]          # size beads + refractive indices
    file = "beads/size.fcs"
    channel = "SSC-H"
    diameters_nm = [100, 200, 300, 400, 500]
    bead_index = 1.59                # polystyrene
    wavelength_nm = 488.0
    medium_index = 1.333
    ev_core_index = 1.38
    ev_shell_index = 1.48
    ev_shell_nm = 5.0

    [flow.gates]
    size_nm = [80, 400]              # diameter gate (needs the size calibration)
    gatingml = "gates.xml"           # optional Gating-ML 2.0 file ...
    parent = "EVs"                   # ... and the gate id used as parent
    [[flow.gates.range]]             # inline range gates (linear scale)
    channel = "SSC-H"
    min = 10.0
    max = 1e6

    [thresholds]                     # how marker thresholds are set
    rule = "percentile 99.5 of isotype"  # or "mean+3sd of isotype", "median+3mad of isotype",
                                     # "fixed", or the alias "control_quantile" with:
    control = "isotype"              #   role of the control samples (alias only)
    quantile = 0.995                 #   quantile, 0..1 (alias only)
    values = { CD63 = 120.0 }        # fixed thresholds (channel units), per marker

    [qc]
    max_buffer_fraction = 0.05       # buffer events / median sample events
    min_detergent_reduction = 0.8    # 1 - detergent / untreated events
    min_dilution_r2 = 0.95

    [imaging]
    channels = ["CD9", "CD63", "CD81"]   # marker of each image channel
    pixel_size_nm = 108.0
    psf_sigma_px = 1.3
    camera_offset = 100.0
    camera_gain = 2.0
    camera_em_gain = 1.0             # EMCCD gain (1 for sCMOS)
    camera_read_noise_e = 1.6        # electrons rms
    false_positives = 0.1            # expected noise detections per field and channel
    detection_threshold_photons = 60 # manual detection threshold (default: automatic); or per channel, a table
    match_radius_px = 2.0            # detections of different channels closer than this are one vesicle
    registration_beads = "images/beads.tif"

    [imaging.thresholds]             # positivity of each marker in a vesicle
    rule = "control_quantile"        # detected (default) | fixed | a control rule as in [thresholds]
    control = "isotype"              # (alias only) role of the negative-control chip (its samples' images)
    quantile = 0.995                 # (alias only) of the marker's photons over the control chip's vesicles
    values = { CD9 = 300.0 }         # photons; fixed rule: every marker; control rule: overrides

    [[samples]]
    name = "S1"
    role = "sample"                  # sample buffer unstained isotype detergent dilution beads
    flow = "flow/S1.fcs"
    images = ["images/S1_f0.tif"]
    dilution = 1.0                   # dilution factor before acquisition
    series = "S1"                    # groups a dilution series
    volume_ul = 1.0
    data_offsets = "header"          # this file's (default: [flow] data_offsets)
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..flow.thresholds import DEFAULT_CONTROL, DEFAULT_QUANTILE, experiment_rule
from ._checks import (
    DETECTION_KEYS,
    RESULT_KEYS,
    _check_detection,
    _check_numbers,
    _check_qc,
    _check_size,
    _path_resolver,
)
from ._qc_settings import apply_bead_kits, extend_schema
from .config_bleaching import BLEACHING_KEYS, check_bleaching
from .image_inputs import check_pixel_sizes as _check_pixel_sizes, image_fields as _image_fields
from .inputs import (
    FLOW_KEYS,
    check_calibration_file,
    check_flow_files as _check_flow_files,
    check_flow_reading,
    sample_offsets,
)

__all__ = ["Experiment", "Sample", "load_experiment", "validate_experiment", "default", "schema_table", "ROLES",
           "SCHEMA"]

ROLES = ("sample", "buffer", "unstained", "isotype", "detergent", "dilution", "beads")

_NUM = (int, float)


@dataclass(frozen=True)
class Key:
    """One setting: accepted type(s), default (None: none, or computed where noted), unit, and what is expected."""

    type: type | tuple
    default: object = None
    unit: str = ""
    help: str = ""


#: The one table of settings: section -> key -> Key.  Validation checks types against it and every
#: default used by the pipeline is read from it (:func:`default`); :func:`schema_table` renders it.
#: ``samples`` and ``flow.gates.range`` describe each table of an array of tables.
SCHEMA: dict[str, dict[str, Key]] = {
    "experiment": {
        "name": Key(str, None, "", "a name"),  # default: the file's stem
        "output": Key(str, None, "", "a folder"),  # default: "<stem>_results" beside the file
        "backend": Key(str, "auto", "", "auto, numpy or cupy"),
        "description": Key(str, None, "", "text"),
        "allow_outside_paths": Key(bool, False, "", "true or false"),
    },
    "flow": {
        "scatter_channel": Key(str, None, "", "a channel name"),
        "markers": Key(dict, None, "", "a table channel -> marker name"),
        "flow_rate_ul_per_min": Key(_NUM, None, "uL/min", "a number (uL/min)"),
        "time_channel": Key(str, None, "", "a channel name"),
        "chunk_events": Key(int, 1 << 19, "events", "an integer"),
    },
    "flow.calibration.fluorescence": {
        "file": Key(str, None, "", "an FCS file"),
        "channel": Key(str, None, "", "a channel name"),
        "values": Key(list, None, "", "a list of bead values, dimmest first"),
        "units": Key(str, "MESF", "", "a unit name such as MESF"),
        "clustering_channels": Key(list, None, "", "a list of channel names"),
    },
    "flow.calibration.size": {
        "file": Key(str, None, "", "an FCS file"),
        "channel": Key(str, None, "", "a channel name"),
        "diameters_nm": Key(list, None, "nm", "a list of diameters (nm)"),
        "bead_index": Key(_NUM, 1.59, "", "a refractive index"),
        "wavelength_nm": Key(_NUM, 488.0, "nm", "a wavelength (nm)"),
        "medium_index": Key(_NUM, 1.333, "", "a refractive index"),
        "ev_core_index": Key(_NUM, 1.38, "", "a refractive index"),
        "ev_shell_index": Key(_NUM, 1.48, "", "a refractive index"),
        "ev_shell_nm": Key(_NUM, 5.0, "nm", "a thickness (nm)"),
    },
    "flow.gates": {
        "size_nm": Key(list, None, "nm", "[min, max] diameters (nm)"),
        "gatingml": Key(str, None, "", "a Gating-ML 2.0 file or a FlowJo workspace (.wsp)"),
        "parent": Key(str, None, "", "a gate id"),
        "range": Key(list, None, "", "a list of {channel, min, max} tables"),
    },
    "flow.gates.range": {
        "channel": Key(str, None, "", "a channel name"),
        "min": Key(_NUM, None, "channel units", "a number"),  # default: -inf
        "max": Key(_NUM, None, "channel units", "a number"),  # default: +inf
    },
    "thresholds": {
        "rule": Key(str, "control_quantile", "", "fixed, a control rule such as 'percentile 99.5 of isotype', or control_quantile"),
        "control": Key(str, DEFAULT_CONTROL, "", "a role"),
        "quantile": Key(_NUM, DEFAULT_QUANTILE, "", "a number in (0, 1)"),
        "values": Key(dict, None, "channel units", "a table marker -> threshold"),
    },
    "qc": {
        "max_buffer_fraction": Key(_NUM, 0.05, "", "a number"),
        "min_detergent_reduction": Key(_NUM, 0.8, "", "a number"),
        "min_dilution_r2": Key(_NUM, 0.95, "", "a number"),
    },
    "imaging": {
        "channels": Key(list, None, "", "a list of marker names, one per image channel"),
        "pixel_size_nm": Key(_NUM, None, "nm", "a pixel size (nm)"),
        "psf_sigma_px": Key(_NUM, 1.3, "px", "a PSF sigma (px)"),
        "camera_offset": Key(_NUM, 0.0, "ADU", "ADU"),
        "camera_gain": Key(_NUM, 1.0, "ADU/electron", "ADU per electron"),
        "camera_em_gain": Key(_NUM, 1.0, "", "an EM gain (>= 1)"),
        "camera_read_noise_e": Key(_NUM, 0.0, "electrons", "electrons rms"),
        "match_radius_px": Key(_NUM, 1.5, "px", "a distance (px)"),
        "registration_beads": Key(str, None, "", "a TIFF file"),
        **{k: Key(*v) for k, v in {**DETECTION_KEYS, **RESULT_KEYS}.items()},  # hot_pixels, ..., chance_correction
    },
    "imaging.thresholds": {
        "rule": Key(str, "detected", "", "detected, fixed, a control rule such as 'percentile 99.5 of isotype', or control_quantile"),
        "control": Key(str, DEFAULT_CONTROL, "", "a role"),
        "quantile": Key(_NUM, DEFAULT_QUANTILE, "", "a number in (0, 1)"),
        "values": Key(dict, None, "photons", "a table marker -> photons"),
    },
    "samples": {
        "name": Key(str, None, "", "a name"),
        "role": Key(str, "sample", "", "one of " + ", ".join(ROLES)),
        "flow": Key(str, None, "", "an FCS file"),
        "images": Key(list, None, "", "a list of TIFF files"),
        "dilution": Key(_NUM, 1.0, "", "a dilution factor >= 1"),
        "series": Key(str, None, "", "a dilution-series name"),
        "volume_ul": Key(_NUM, None, "uL", "a volume (uL)"),
        "treatment": Key(str, None, "", "text"),
        "bleaching": Key(list, None, "", "a list of [[samples.bleaching]] tables (photobleaching movies)"),
    },
    **{sec: {k: Key(*v) for k, v in keys.items()} for sec, keys in BLEACHING_KEYS.items()},  # copies per vesicle
}

extend_schema(SCHEMA, Key, FLOW_KEYS)  # [beads], [instrument], time QC, kits (_qc_settings); scale, data_offsets
#: sections that describe each table of an array of tables, and how the array itself is described
_ARRAYS = {"samples": "an array of [[samples]] tables", "flow.gates.range": None, "samples.bleaching": None}


def default(section: str, key: str):
    """The default of ``key`` in ``section`` (e.g. ``default("thresholds", "quantile")`` is 0.995)."""
    try:
        return copy.deepcopy(SCHEMA[section][key].default)
    except KeyError:
        raise ConfigError(f"no setting '{section}.{key}' in the experiment schema") from None


def _typename_of(types) -> str:
    return {_NUM: "number", str: "string", int: "integer", list: "array", dict: "table",
            (int, float, dict): "number or table"}.get(types, str(types))


def schema_table() -> list[tuple]:
    """Every setting as a row ``(section, key, type, default, unit, description)`` (for the docs)."""
    return [(section, key, _typename_of(k.type), k.default, k.unit, k.help)
            for section, keys in SCHEMA.items() for key, k in keys.items()]


def _nested_schema() -> dict:
    """The schema as nested tables (section path -> sub-table) for :func:`_check_table`."""
    root: dict = {"samples": Key(list, None, "", _ARRAYS["samples"])}
    for section, keys in SCHEMA.items():
        if section in _ARRAYS:
            continue
        node = root
        for part in section.split("."):
            node = node.setdefault(part, {})
        node.update(keys)
    return root


_NESTED = _nested_schema()


@dataclass
class Sample:
    """One sample of the experiment (flow file and/or image fields)."""

    name: str
    role: str = "sample"
    flow: Path | None = None
    images: list = field(default_factory=list)
    dilution: float = 1.0
    series: str | None = None
    volume_ul: float | None = None
    treatment: str | None = None
    data_offsets: str = "auto"  # where the DATA lies when HEADER and TEXT disagree: its own, else [flow]'s


@dataclass
class Experiment:
    """A validated experiment: the raw settings plus resolved paths and samples."""

    path: Path | None
    settings: dict
    samples: list
    output: Path

    @property
    def name(self) -> str:
        return self.settings.get("experiment", {}).get("name") or (self.path.stem if self.path else "experiment")

    @property
    def base(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def resolve(self, p) -> Path:
        p = Path(p)
        return p if p.is_absolute() else (self.base / p)

    @property
    def flow(self) -> dict:
        return self.settings.get("flow", {})

    @property
    def imaging(self) -> dict:
        return self.settings.get("imaging", {})

    @property
    def markers(self) -> dict:
        """Flow channel -> marker name, in bit order."""
        return dict(self.flow.get("markers", {}))

    def by_role(self, role: str) -> list:
        return [s for s in self.samples if s.role == role]

    def config_hash(self) -> str:
        """SHA-256 of the canonical JSON of the settings (paths as written)."""
        return hashlib.sha256(json.dumps(self.settings, sort_keys=True, default=str).encode()).hexdigest()


def _typename(v) -> str:
    return type(v).__name__


def _check_table(where: str, table: Mapping, schema: Mapping, problems: list, src: str):
    for key, value in table.items():
        spec = schema.get(key)
        k = f"{where}.{key}" if where else key
        if spec is None:
            problems.append(f"{src}: unknown key '{k}' (expected one of: {', '.join(sorted(schema))})")
            continue
        if isinstance(spec, dict):
            if not isinstance(value, Mapping):
                problems.append(f"{src}: '{k}' must be a table, found {_typename(value)}")
                continue
            _check_table(k, value, spec, problems, src)
            continue
        types, desc = spec.type, spec.help
        ok = isinstance(value, types) and not (isinstance(value, bool) and types is not bool)
        if not ok:
            problems.append(f"{src}: '{k}' must be {desc}, found {value!r} ({_typename(value)})")


def _read_file(path: Path) -> dict:
    text = path.read_bytes()
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:  # pragma: no cover
            raise ConfigError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use TOML") from None
        try:
            data = yaml.safe_load(text.decode("utf-8"))
        except Exception as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    else:
        import tomllib

        try:
            data = tomllib.loads(text.decode("utf-8"))
        except Exception as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the experiment file must hold a table of settings, found {_typename(data)}")
    return _check_size(data, path)


def load_experiment(config, *, output=None, check_files: bool = True) -> Experiment:
    """Read and validate an experiment file (TOML or YAML) or a settings dict.

    Parameters
    ----------
    config : str, Path, dict or Experiment
        The experiment file, or its settings (paths then relative to the
        current folder).
    output : str or Path, optional
        Output folder; overrides ``[experiment].output``.
    check_files : bool
        Check that input files exist and hold the named channels.

    Raises
    ------
    ConfigError
        Listing every problem found, one per line, each naming the file and key.
    """
    if isinstance(config, Experiment):
        if output is not None:
            config.output = Path(output)
        return config
    if isinstance(config, Mapping):
        path, settings = None, json.loads(json.dumps(config, default=str))
    else:
        path = Path(config).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"experiment file {config} not found")
        settings = _read_file(path)
    return validate_experiment(settings, path=path, output=output, check_files=check_files)


def validate_experiment(settings: dict, *, path=None, output=None, check_files: bool = True) -> Experiment:
    """Check ``settings`` against the schema and the files; see :func:`load_experiment`."""
    src = str(path) if path else "<settings>"
    problems: list[str] = []
    apply_bead_kits(settings, path, problems, src)  # kit = "..." -> values / diameters_nm
    _check_table("", settings, _NESTED, problems, src)
    base = Path(path).parent if path else Path.cwd()

    exp_s = settings.get("experiment", {}) if isinstance(settings.get("experiment"), Mapping) else {}
    resolve = _path_resolver(base, exp_s.get("allow_outside_paths") is True, problems, src)
    _check_numbers(settings, problems, src)
    flow_s = settings.get("flow", {}) if isinstance(settings.get("flow"), Mapping) else {}
    img_s = settings.get("imaging", {}) if isinstance(settings.get("imaging"), Mapping) else {}
    thr_s = settings.get("thresholds", {}) if isinstance(settings.get("thresholds"), Mapping) else {}
    qc = settings.get("qc", {}) if isinstance(settings.get("qc"), Mapping) else {}

    backend = exp_s.get("backend", default("experiment", "backend"))
    if isinstance(backend, str) and backend.lower() not in ("auto", "numpy", "cupy"):
        problems.append(f"{src}: 'experiment.backend' is {backend!r}, expected auto, numpy or cupy")

    samples = _check_samples(settings.get("samples"), img_s, flow_s, src, problems, resolve, check_files)
    roles = {s.role for s in samples}
    flow_samples = [s for s in samples if s.flow is not None]

    markers = flow_s.get("markers", {})
    needed_channels = _check_flow(flow_s, markers, flow_samples, src, problems, resolve, check_files)
    if check_files:
        _check_flow_files(flow_s, samples, flow_samples, needed_channels, src, problems)
    _check_thresholds(thr_s, markers, samples, flow_samples, roles, src, problems)
    _check_qc(qc, samples, roles, src, problems)
    if img_s:
        _check_imaging(img_s, samples, src, problems, resolve, check_files)
    check_bleaching(settings, src, problems, resolve, check_files)

    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in the experiment:\n  " + "\n  ".join(problems))
    out = output if output is not None else exp_s.get("output")
    if out is None:
        out = (base / f"{Path(path).stem}_results") if path else Path.cwd() / "evflow_results"
    out = Path(out)
    if not out.is_absolute():
        out = (base / out) if (output is None and path) else Path.cwd() / out
    return Experiment(path=Path(path) if path else None, settings=settings, samples=samples, output=out)


def _check_samples(raw_samples, img_s, flow_s, src, problems, resolve, check_files) -> list:
    """``[[samples]]``: names, roles, dilutions, volumes and files; the samples."""
    samples: list[Sample] = []
    if raw_samples is None:
        problems.append(f"{src}: no [[samples]]: at least one sample is needed")
        raw_samples = []
    elif not isinstance(raw_samples, list):
        raw_samples = []
    names: set = set()
    for i, s in enumerate(raw_samples):
        key = f"samples[{i}]"
        if not isinstance(s, Mapping):
            problems.append(f"{src}: '{key}' must be a table, found {_typename(s)}")
            continue
        _check_table(key, s, SCHEMA["samples"], problems, src)
        name = s.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{src}: '{key}.name' is missing (every sample needs a unique name)")
            name = f"#{i}"
        elif name in names:
            problems.append(f"{src}: '{key}.name' {name!r} is used by another sample (names must be unique)")
        elif any(c in name for c in '/\\:*?"<>|') or name.startswith(".") or any(ord(c) < 32 for c in name):
            problems.append(f"{src}: '{key}.name' {name!r} holds characters not allowed in a file name")
        names.add(name)
        role = s.get("role", "sample")
        if role not in ROLES:
            problems.append(f"{src}: '{key}.role' is {role!r}, expected one of {', '.join(ROLES)}")
        dil = s.get("dilution", 1.0)
        if isinstance(dil, _NUM) and not isinstance(dil, bool) and not (dil >= 1 and math.isfinite(dil)):
            problems.append(f"{src}: '{key}.dilution' is {dil!r}, expected a dilution factor >= 1")
        vol = s.get("volume_ul")
        if isinstance(vol, _NUM) and not vol > 0:
            problems.append(f"{src}: '{key}.volume_ul' is {vol!r}, expected a volume > 0 uL")
        flow = s.get("flow")
        images = s.get("images", []) if isinstance(s.get("images", []), list) else []
        if flow is None and not images and role != "beads":
            problems.append(f"{src}: '{key}' ({name}) has neither 'flow' nor 'images'")
        fpath = resolve(flow) if isinstance(flow, str) else None
        if check_files and fpath is not None and not fpath.is_file():
            problems.append(f"{src}: '{key}.flow' file {flow!r} not found (looked at {fpath})")
        ipaths = []  # a glob or multi-field file stands for several fields, each opened (metadata) here
        for j, im in enumerate(images):
            if not isinstance(im, str):
                problems.append(f"{src}: '{key}.images[{j}]' must be a file name or pattern, found {im!r}")
                continue
            ipaths += _image_fields(im, resolve, img_s, check_files, problems, f"{src}: '{key}.images[{j}]'")
        if images and not img_s:
            problems.append(f"{src}: '{key}.images' given but there is no [imaging] section")
        samples.append(
            Sample(
                name=str(name), role=str(role), flow=fpath, images=ipaths,
                dilution=float(dil) if isinstance(dil, _NUM) else 1.0,
                series=s.get("series"), volume_ul=float(vol) if isinstance(vol, _NUM) else None,
                treatment=s.get("treatment"), data_offsets=sample_offsets(s, flow_s, key, src, problems),
            )
        )
    return samples


def _check_flow(flow_s, markers, flow_samples, src, problems, resolve, check_files) -> dict:
    """``[flow]``: markers, gates and calibrations; the channels every flow file needs (channel -> key)."""
    if flow_samples and not flow_s:
        problems.append(f"{src}: samples have 'flow' files but there is no [flow] section")
    if isinstance(markers, Mapping):
        for ch, m in markers.items():
            if not isinstance(m, str) or not m.strip():
                problems.append(f"{src}: 'flow.markers.{ch}' must be a marker name, found {m!r}")
        markers = {ch: m for ch, m in markers.items() if isinstance(m, str)}  # the others are problems above
        if len(set(markers.values())) != len(markers):
            problems.append(f"{src}: 'flow.markers' names a marker twice ({list(markers.values())})")
        if len(markers) > 8:
            problems.append(f"{src}: 'flow.markers' lists {len(markers)} markers, at most 8 are supported")
    cal = flow_s.get("calibration", {}) if isinstance(flow_s.get("calibration"), Mapping) else {}
    needed_channels: dict[str, str] = {}  # channel -> key that needs it
    if isinstance(markers, Mapping):
        for ch in markers:
            needed_channels[str(ch)] = f"flow.markers.{ch}"
    if isinstance(flow_s.get("scatter_channel"), str):
        needed_channels[flow_s["scatter_channel"]] = "flow.scatter_channel"
    gates = flow_s.get("gates", {}) if isinstance(flow_s.get("gates"), Mapping) else {}
    for j, r in enumerate(gates.get("range", []) if isinstance(gates.get("range"), list) else []):
        k = f"flow.gates.range[{j}]"
        if not isinstance(r, Mapping):
            problems.append(f"{src}: '{k}' must be a table with channel, min, max")
            continue
        _check_table(k, r, SCHEMA["flow.gates.range"], problems, src)
        if "channel" not in r:
            problems.append(f"{src}: '{k}.channel' is missing")
        else:
            needed_channels.setdefault(str(r["channel"]), f"{k}.channel")
        lo, hi = r.get("min", -math.inf), r.get("max", math.inf)
        if isinstance(lo, _NUM) and isinstance(hi, _NUM) and not lo < hi:
            problems.append(f"{src}: '{k}' has min {lo} >= max {hi}")
    size_nm = gates.get("size_nm")
    if size_nm is not None:
        if not (isinstance(size_nm, list) and len(size_nm) == 2 and all(isinstance(v, _NUM) for v in size_nm)
                and 0 < size_nm[0] < size_nm[1]):
            problems.append(f"{src}: 'flow.gates.size_nm' is {size_nm!r}, expected [min_nm, max_nm] with 0 < min < max")
        if "size" not in cal:
            problems.append(f"{src}: 'flow.gates.size_nm' needs a size calibration ([flow.calibration.size])")
    if "gatingml" in gates:
        gp = resolve(gates["gatingml"]) if isinstance(gates["gatingml"], str) else None
        if check_files and gp is not None and not gp.is_file():
            problems.append(f"{src}: 'flow.gates.gatingml' file {gates['gatingml']!r} not found (looked at {gp})")
        if "parent" not in gates:
            problems.append(f"{src}: 'flow.gates.gatingml' needs 'flow.gates.parent' (the gate id of the EV population)")
        elif check_files and gp is not None and gp.is_file():
            try:
                from ..flow.flowjo import read_gates_file as read_gatingml

                strat = read_gatingml(gp)
                ids = strat.gate_ids() if callable(strat.gate_ids) else list(strat.gate_ids)
                if gates["parent"] not in ids:
                    problems.append(f"{src}: 'flow.gates.parent' {gates['parent']!r} is not a gate of "
                                    f"{gates['gatingml']} (gates: {', '.join(ids)})")
                else:
                    for ch in strat.required_channels([gates["parent"]])[gates["parent"]]:
                        needed_channels.setdefault(ch, f"flow.gates.gatingml (gate {gates['parent']})")
            except Exception as exc:
                problems.append(f"{src}: 'flow.gates.gatingml' {gates['gatingml']!r} cannot be read: {exc}")
    for kind, required in (("fluorescence", ("file", "channel", "values")), ("size", ("file", "channel", "diameters_nm"))):
        c = cal.get(kind)
        if not isinstance(c, Mapping):
            continue
        for r in required:
            if r not in c:
                problems.append(f"{src}: 'flow.calibration.{kind}.{r}' is missing")
        check_calibration_file(c, kind, flow_s, resolve, check_files, problems, src)  # there, readable, channels
        if kind == "fluorescence" and isinstance(c.get("channel"), str) and isinstance(markers, Mapping):
            if c["channel"] not in markers:
                problems.append(f"{src}: 'flow.calibration.fluorescence.channel' {c['channel']!r} is not one of "
                                f"the marker channels in 'flow.markers' ({list(markers)})")
        vals = c.get("values") if kind == "fluorescence" else c.get("diameters_nm")
        if isinstance(vals, list) and not all(isinstance(v, _NUM) and not isinstance(v, bool) for v in vals):
            problems.append(f"{src}: 'flow.calibration.{kind}' values must all be numbers, found {vals!r}")
    check_flow_reading(flow_s, src, problems)  # scale, data_offsets
    if isinstance(flow_s.get("chunk_events"), int) and flow_s["chunk_events"] < 1000:
        problems.append(f"{src}: 'flow.chunk_events' is {flow_s['chunk_events']}, expected >= 1000")
    return needed_channels


def _check_thresholds(thr_s, markers, samples, flow_samples, roles, src, problems):
    """``[thresholds]``: the rule and the roles it needs."""
    rule = thr_s.get("rule", "control_quantile" if flow_samples and markers else None)
    trule = None  # a rule string (flow.thresholds grammar)
    if rule is not None and rule not in ("control_quantile", "fixed"):
        try:
            trule = experiment_rule(thr_s, "thresholds", default=None)
        except ConfigError as exc:
            problems.append(f"{src}: {exc}")
    if (rule == "control_quantile" or trule is not None) and flow_samples and markers:
        ctrl = thr_s.get("control", DEFAULT_CONTROL) if trule is None else trule.control
        key = "thresholds.control" if trule is None else "thresholds.rule"
        if ctrl not in ROLES:
            problems.append(f"{src}: '{key}' names control {ctrl!r}, expected a role ({', '.join(ROLES)})"
                            if trule is not None else
                            f"{src}: 'thresholds.control' is {ctrl!r}, expected a role ({', '.join(ROLES)})")
        elif not any(s.role == ctrl and s.flow is not None for s in samples):
            problems.append(
                f"{src}: 'thresholds.rule' {'control_quantile' if trule is None else repr(rule)} needs a flow sample "
                f"with role {ctrl!r} ('{key}'), but none is listed (roles present: {', '.join(sorted(roles)) or 'none'})"
            )
        q = thr_s.get("quantile", DEFAULT_QUANTILE)
        if trule is None and isinstance(q, _NUM) and not 0 < q < 1:
            problems.append(f"{src}: 'thresholds.quantile' is {q}, expected a number in (0, 1)")
    if rule == "fixed" and isinstance(markers, Mapping):
        vals = thr_s.get("values", {})
        for m in (m for m in markers.values() if isinstance(m, str)):  # other values: problems already
            if not isinstance(vals, Mapping) or not isinstance(vals.get(m), _NUM):
                problems.append(f"{src}: 'thresholds.values.{m}' is missing (rule 'fixed' needs a threshold per marker)")


def _check_imaging(img_s, samples, src, problems, resolve, check_files):
    """``[imaging]``: channels, camera, thresholds, registration beads and the channels of each field."""
    ch = img_s.get("channels")
    if not isinstance(ch, list) or not ch or not all(isinstance(c, str) for c in ch):
        problems.append(f"{src}: 'imaging.channels' must list the marker of each image channel")
    elif len(set(ch)) != len(ch):
        problems.append(f"{src}: 'imaging.channels' names a marker twice ({ch})")
    for key in ("pixel_size_nm", "psf_sigma_px", "camera_gain", "match_radius_px", "false_positives",
                "detection_threshold_photons"):  # numbers; per-channel tables: _checks._check_detection
        v = img_s.get(key)
        if isinstance(v, _NUM) and not v > 0:
            problems.append(f"{src}: 'imaging.{key}' is {v}, expected a number > 0")
    _check_detection(img_s, src, resolve, check_files, problems)
    if isinstance(img_s.get("camera_em_gain"), _NUM) and not img_s["camera_em_gain"] >= 1:
        problems.append(f"{src}: 'imaging.camera_em_gain' is {img_s['camera_em_gain']}, expected a number >= 1")
    it = img_s.get("thresholds", {}) if isinstance(img_s.get("thresholds"), Mapping) else {}
    irule = it.get("rule", "detected")
    ivals = it.get("values", {}) if isinstance(it.get("values", {}), Mapping) else {}
    chan_list = ch if isinstance(ch, list) else []
    itrule = None  # a rule string (flow.thresholds grammar)
    if irule not in ("detected", "fixed", "control_quantile"):
        try:
            itrule = experiment_rule(it, "imaging.thresholds", default=None, keywords=("detected", "fixed"))
        except ConfigError as exc:
            problems.append(f"{src}: {exc}")
    for m, v in ivals.items():
        if m not in chan_list:
            problems.append(f"{src}: 'imaging.thresholds.values.{m}': {m!r} is not one of 'imaging.channels' "
                            f"({chan_list})")
        elif not isinstance(v, _NUM) or isinstance(v, bool):
            problems.append(f"{src}: 'imaging.thresholds.values.{m}' must be a number of photons, found {v!r}")
    if irule == "fixed":
        for m in chan_list:
            if m not in ivals:
                problems.append(f"{src}: 'imaging.thresholds.values.{m}' is missing "
                                "(rule 'fixed' needs a threshold per image channel)")
    if irule == "control_quantile" or itrule is not None:
        ictrl = it.get("control", DEFAULT_CONTROL) if itrule is None else itrule.control
        ikey = "imaging.thresholds.control" if itrule is None else "imaging.thresholds.rule"
        if ictrl not in ROLES:
            problems.append(f"{src}: '{ikey}' names control {ictrl!r}, expected a role ({', '.join(ROLES)})"
                            if itrule is not None else
                            f"{src}: 'imaging.thresholds.control' is {ictrl!r}, expected a role ({', '.join(ROLES)})")
        elif not any(s.role == ictrl and s.images for s in samples):
            problems.append(
                f"{src}: 'imaging.thresholds.rule' {'control_quantile' if itrule is None else repr(irule)} needs "
                f"image fields of a sample with role {ictrl!r} ('{ikey}'), but none is listed"
            )
        iq = it.get("quantile", DEFAULT_QUANTILE)
        if itrule is None and isinstance(iq, _NUM) and not 0 < iq < 1:
            problems.append(f"{src}: 'imaging.thresholds.quantile' is {iq}, expected a number in (0, 1)")
    rb = img_s.get("registration_beads")
    if isinstance(rb, str) and check_files and not resolve(rb).is_file():
        problems.append(f"{src}: 'imaging.registration_beads' file {rb!r} not found (looked at {resolve(rb)})")
    if check_files:  # channel counts and readability: checked as the fields were listed (image_inputs)
        _check_pixel_sizes(samples, img_s, src, problems)
