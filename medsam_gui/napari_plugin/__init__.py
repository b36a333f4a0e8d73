"""napari plugin (npe2; manifest ``medsam_gui/napari.yaml``).

- ``reader``: scans (NIfTI, NRRD, MHA/MHD, MGZ, DICOM folders) as layers in mm, in the app's
  radiological display order, keeping the source geometry in the layer metadata;
- ``writer``: a labels layer back onto the exact source grid (NIfTI / NRRD / MHA);
- ``sample``: the bundled demo CT;
- ``widgets``: the MedSAM, UniverSeg, Labels, Measurements and Auto-segment panels over the
  viewer's layers.

Layer metadata: ``layer.metadata[METADATA_KEY] = {"volume": Volume, "orientation":
DisplayOrientation}`` (see :mod:`.reader`). Nothing here runs at import time.
"""
