"""The colours of evflow's figures: one place for the report and the napari plugin.

* phenotypes are coloured by their bitmask (bit i = marker i positive), so a
  phenotype has the same colour in the HTML report, the napari points, the
  legend and the results browser;
* image channels are coloured by position (channel 0 green, 1 magenta, ...),
  as napari colormap names and as RGB for thumbnails.
"""

from __future__ import annotations

__all__ = ["PHENOTYPE_COLOURS", "CHANNEL_COLORMAPS", "CHANNEL_RGB", "phenotype_colour", "phenotype_colours",
           "channel_colormap", "channel_rgb"]

#: colour of phenotype bitmask b is PHENOTYPE_COLOURS[b % len]; bitmask 0 (all negative) is grey
PHENOTYPE_COLOURS = ("#9e9e9e", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                     "#17becf", "#bcbd22", "#393b79", "#ad494a", "#637939", "#8c6d31", "#7b4173", "#3182bd")

#: napari colormap names of image channels 0, 1, 2, ...
CHANNEL_COLORMAPS = ("green", "magenta", "cyan", "yellow", "red", "blue")

#: the same channel colours as RGB in 0..1 (thumbnails, figures)
CHANNEL_RGB = ((0.2, 1.0, 0.2), (1.0, 0.2, 1.0), (0.2, 0.8, 1.0), (1.0, 0.8, 0.2), (1.0, 0.2, 0.2), (0.3, 0.4, 1.0))


def phenotype_colour(bitmask: int) -> str:
    """Hex colour of the phenotype with this bitmask."""
    return PHENOTYPE_COLOURS[int(bitmask) % len(PHENOTYPE_COLOURS)]


def phenotype_colours(labels) -> dict:
    """Label -> hex colour for phenotype labels listed in bitmask order (as :func:`evflow.schema.phenotype_labels`)."""
    return {str(lab): phenotype_colour(b) for b, lab in enumerate(labels)}


def channel_colormap(channel: int) -> str:
    """napari colormap name of image channel ``channel`` (0-based)."""
    return CHANNEL_COLORMAPS[int(channel) % len(CHANNEL_COLORMAPS)]


def channel_rgb(channel: int) -> tuple:
    """RGB (0..1) of image channel ``channel``."""
    return CHANNEL_RGB[int(channel) % len(CHANNEL_RGB)]
