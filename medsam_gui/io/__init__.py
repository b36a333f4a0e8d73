"""Scan and label-map input/output (SimpleITK; nibabel for .mgz). No Qt.

Heavy libraries (SimpleITK, nibabel) are imported inside the functions that use them.
"""

from .dicom import DicomSeriesInfo, MultipleSeriesError, list_dicom_series
from .label_files import read_label_description, write_label_description
from .readers import MultiComponentError, load_volume, volume_info
from .writers import load_labels, save_labels

__all__ = [
    "load_volume",
    "save_labels",
    "load_labels",
    "list_dicom_series",
    "read_label_description",
    "write_label_description",
    "volume_info",
    "DicomSeriesInfo",
    "MultipleSeriesError",
    "MultiComponentError",
]
