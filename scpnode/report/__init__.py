"""What the node sends to PACS (the only package that imports highdicom).

`sr`: the AI Results structured report (and its "not analysed" variant, and the Comprehensive
SR fallback); `keyimages`: the optional Key Object Selection and heat-map images.
"""

from scpnode.report.keyimages import (
    KEY_OBJECT_SELECTION,
    SECONDARY_CAPTURE,
    build_heatmap,
    build_key_object_selection,
)
from scpnode.report.sr import (
    COMPREHENSIVE_3D_SR,
    COMPREHENSIVE_SR,
    build_not_analysed_sr,
    build_result_sr,
    comprehensive_sr_fallback,
    is_own_object,
    plain,
    series_description,
    sr_to_bytes,
)

__all__ = [
    "COMPREHENSIVE_3D_SR",
    "COMPREHENSIVE_SR",
    "KEY_OBJECT_SELECTION",
    "SECONDARY_CAPTURE",
    "build_heatmap",
    "build_key_object_selection",
    "build_not_analysed_sr",
    "build_result_sr",
    "comprehensive_sr_fallback",
    "is_own_object",
    "plain",
    "series_description",
    "sr_to_bytes",
]
