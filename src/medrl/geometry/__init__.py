"""World geometry of structures: axis-aligned boxes (:mod:`medrl.geometry.boxes`) and label
maps moved with the evaluation scenarios (:mod:`medrl.geometry.warp_labels`)."""

from medrl.geometry.boxes import (
    BOX_COLUMNS,
    box_corners,
    box_iou,
    box_volume_mm3,
    boxes_from_label_map,
    boxes_from_points,
    centre_distance_mm,
    from_min_max,
    structure_points_ras,
    to_min_max,
    voxel_half_extent_mm,
    wall_distance_mm,
)

__all__ = [
    "BOX_COLUMNS",
    "box_corners",
    "box_iou",
    "box_volume_mm3",
    "boxes_from_label_map",
    "boxes_from_points",
    "centre_distance_mm",
    "from_min_max",
    "structure_points_ras",
    "to_min_max",
    "voxel_half_extent_mm",
    "wall_distance_mm",
]
