"""medsam-gui: segment 3D CT and MR scans with MedSAM and UniverSeg.

Layout (dependency direction ``core`` <- ``io``, ``models`` <- ``gui`` <- ``app``):

- ``medsam_gui.core``   numpy-only: volumes, prompts, intensity windowing, propagation, measurements
- ``medsam_gui.io``     reading scans and writing label maps (SimpleITK, nibabel)
- ``medsam_gui.models`` torch models (MedSAM, UniverSeg), model manager, embedding cache
- ``medsam_gui.gui``    the only package that imports Qt / napari
- ``medsam_gui.cli``    headless commands; ``medsam_gui.app`` builds the viewer

No module does work when imported: models are built and devices chosen on demand.
"""

__version__ = "0.1.0"
