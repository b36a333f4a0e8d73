"""The napari plugin (npe2): manifest, reader, writer, sample data and widgets, through npe2's
plugin manager and napari's own viewer, checked against SimpleITK's reading of real scans."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import napari
import nibabel as nib
import npe2
import numpy as np
import pytest
import SimpleITK as sitk
from npe2 import PluginManifest

from medsam_gui.errors import ExportError

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "medsam_gui" / "napari.yaml"
PLUGIN = "medsam-gui"
HIPPO = "msd_hippocampus/hippocampus_001_image.nii.gz"
HIPPO_LABEL = "msd_hippocampus/hippocampus_001_label.nii.gz"
BRAIN_NRRD = "brain_mr/brain1_image.nrrd"
DICOM_DIR = "dcmqi_ct3slice_liver/dicom"
CT_NRRD = "dcmqi_ct3slice_liver/ct_3slice.nrrd"
# axis-aligned but permuted and flipped (columns: index x -> -z (I), y -> +x (L), z -> -y (A))
PERMUTED = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0, -1.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def pm():
    """npe2's plugin manager, which found medsam-gui through its installed entry point."""
    manager = npe2.PluginManager.instance()
    manager.discover()
    assert PLUGIN in manager, "medsam-gui's napari.manifest entry point is not installed (pip install -e .)"
    return manager


def lps_display(img: sitk.Image) -> sitk.Image:
    """SimpleITK's own reorientation to the app's display order (slices I->S, rows A->P, cols R->L)."""
    return sitk.DICOMOrient(img, "LPS")


def assert_layer_matches(layer_tuple, img: sitk.Image, *, layer_type="image") -> None:
    """data, scale and translate of a reader layer tuple equal SimpleITK's LPS-oriented image."""
    data, meta, ltype = layer_tuple
    ref = lps_display(img)
    assert ltype == layer_type
    np.testing.assert_array_equal(np.asarray(data), sitk.GetArrayFromImage(ref))
    np.testing.assert_allclose(meta["scale"], ref.GetSpacing()[::-1], rtol=1e-6)
    np.testing.assert_allclose(meta["translate"], ref.GetOrigin()[::-1], atol=1e-4)
    assert meta["units"] == "mm"
    volume = meta["metadata"]["medsam_gui"]["volume"]
    np.testing.assert_allclose(volume.spacing, img.GetSpacing())
    np.testing.assert_allclose(volume.origin, img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(volume.direction, img.GetDirection(), atol=1e-6)


@pytest.fixture(scope="module")
def permuted_mha(tmp_path_factory, data_dir) -> Path:
    """The hippocampus MR as MHA with a permuted, flipped direction and an off-zero origin."""
    img = sitk.GetImageFromArray(sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / HIPPO))))
    img.SetDirection(PERMUTED)
    img.SetOrigin((12.5, -30.0, 7.25))
    img.SetSpacing((1.0, 1.5, 2.0))
    path = tmp_path_factory.mktemp("mha") / "hippo_permuted.mha"
    sitk.WriteImage(img, str(path))
    return path


# ------------------------------------------------------------------ manifest / discovery
def test_manifest_validates_with_npe2_cli(pm):
    proc = subprocess.run([sys.executable, "-m", "npe2", "validate", str(MANIFEST)], capture_output=True,
                          encoding="utf-8", env={**os.environ, "PYTHONIOENCODING": "utf-8"}, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout
    # every command's python_name resolves (what `npe2 validate --imports` checks)
    for command in pm.get_manifest(PLUGIN).contributions.commands:
        assert callable(pm.commands.get(command.id)), command.id


def test_entry_point_names_the_packaged_manifest(pm):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    entry = project["project"]["entry-points"]["napari.manifest"][PLUGIN]
    module, _, filename = entry.partition(":")
    assert filename in project["tool"]["setuptools"]["package-data"][module]
    manifest = PluginManifest.from_file(resources.files(module) / filename)
    assert manifest.name == PLUGIN
    contrib = pm.get_manifest(PLUGIN).contributions
    assert {w.display_name for w in contrib.widgets} == {"MedSAM", "UniverSeg", "Labels", "Measurements",
                                                         "Auto-segment"}
    assert [s.key for s in contrib.sample_data] == ["demo_ct"]


# ------------------------------------------------------------------ reader
@pytest.mark.parametrize("rel", [HIPPO, BRAIN_NRRD, CT_NRRD])
def test_reader_gives_display_order_in_mm(pm, data_dir, rel):
    layers = npe2.read([str(data_dir / rel)], stack=False, plugin_name=PLUGIN)
    assert len(layers) == 1
    assert_layer_matches(layers[0], sitk.ReadImage(str(data_dir / rel)))
    assert layers[0][1]["name"] == Path(rel).name.split(".")[0]


def test_reader_permuted_mha(pm, permuted_mha):
    layers = npe2.read([str(permuted_mha)], stack=False, plugin_name=PLUGIN)
    img = sitk.ReadImage(str(permuted_mha))
    assert_layer_matches(layers[0], img)
    # display axes follow the patient, not the file: slices along the file's x axis (1.0 mm),
    # rows along its z axis (2.0 mm), columns along its y axis (1.5 mm)
    assert tuple(layers[0][1]["scale"]) == (1.0, 2.0, 1.5)


def test_reader_dicom_folder(pm, data_dir):
    folder = data_dir / DICOM_DIR
    layers = npe2.read([str(folder)], stack=False, plugin_name=PLUGIN)
    assert len(layers) == 1
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    assert_layer_matches(layers[0], reader.Execute())
    # the same CT as the NRRD copy, in the same place
    nrrd = npe2.read([str(data_dir / CT_NRRD)], stack=False, plugin_name=PLUGIN)[0]
    np.testing.assert_allclose(layers[0][1]["translate"], nrrd[1]["translate"], atol=1e-3)


def test_reader_mgz(pm, data_dir, tmp_path):
    src = nib.load(str(data_dir / HIPPO))
    data = np.asarray(src.dataobj).astype(np.float32)
    affine = np.diag([1.2, 0.8, 1.5, 1.0])
    affine[:3, 3] = (-20.0, 15.0, 4.0)
    path = tmp_path / "hippo.mgz"
    nib.save(nib.MGHImage(data, affine), str(path))
    # the same grid built by hand in SimpleITK (LPS: x and y of RAS negated)
    ref = sitk.GetImageFromArray(np.transpose(data, (2, 1, 0)))
    ref.SetSpacing((1.2, 0.8, 1.5))
    ref.SetOrigin((20.0, -15.0, 4.0))
    ref.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    layers = npe2.read([str(path)], stack=False, plugin_name=PLUGIN)
    assert_layer_matches(layers[0], ref)


def test_reader_opens_label_maps_as_labels(pm, data_dir):
    layers = npe2.read([str(data_dir / HIPPO_LABEL)], stack=False, plugin_name=PLUGIN)
    assert_layer_matches(layers[0], sitk.ReadImage(str(data_dir / HIPPO_LABEL)), layer_type="labels")


def test_reader_opens_the_first_component_of_a_vector_image(pm, data_dir, tmp_path):
    img = sitk.ReadImage(str(data_dir / HIPPO))
    first = sitk.GetImageFromArray(sitk.GetArrayFromImage(img))
    first.CopyInformation(img)
    second = sitk.Cast(first, sitk.sitkFloat32) * 2.0
    path = tmp_path / "two_channels.mha"
    sitk.WriteImage(sitk.Compose(sitk.Cast(first, sitk.sitkFloat32), second), str(path))
    layers = npe2.read([str(path)], stack=False, plugin_name=PLUGIN)
    assert len(layers) == 1
    assert_layer_matches(layers[0], sitk.Cast(first, sitk.sitkFloat32))


def test_reader_declines_other_paths(pm, tmp_path, data_dir):
    from medsam_gui.napari_plugin.reader import get_reader

    (tmp_path / "notes.txt").write_text("x")
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path)) is None  # a folder without DICOM files
    assert get_reader(str(data_dir / DICOM_DIR)) is not None


# ------------------------------------------------------------------ writer
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
@pytest.mark.parametrize("which", ["nifti", "permuted"])
def test_write_read_round_trip_on_source_grid(pm, data_dir, permuted_mha, tmp_path, which, suffix):
    scan = data_dir / HIPPO if which == "nifti" else permuted_mha
    img = sitk.ReadImage(str(scan))
    labels_zyx = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / HIPPO_LABEL))).astype(np.uint8)
    assert labels_zyx.shape == sitk.GetArrayFromImage(img).shape and labels_zyx.max() == 2
    lab_img = sitk.GetImageFromArray(labels_zyx)
    lab_img.CopyInformation(img)
    display = sitk.GetArrayFromImage(lps_display(lab_img))  # what the user sees, by SimpleITK

    image_data, image_meta, _ = npe2.read([str(scan)], stack=False, plugin_name=PLUGIN)[0]
    labels_meta = {"name": "labels", "scale": image_meta["scale"], "translate": image_meta["translate"],
                   "metadata": image_meta["metadata"]}
    out = tmp_path / f"seg{suffix}"
    written = npe2.write(str(out), [(display, labels_meta, "labels")], plugin_name=PLUGIN)
    assert written == [str(out)]
    back = sitk.ReadImage(str(out))
    assert back.GetSize() == img.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), img.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels_zyx)
    # and the reader shows the written label map exactly where the user drew it
    again = npe2.read([str(out)], stack=False, plugin_name=PLUGIN)[0]
    assert again[2] == "labels"
    np.testing.assert_array_equal(np.asarray(again[0]), display)
    np.testing.assert_allclose(again[1]["translate"], image_meta["translate"], atol=1e-4)


def test_writer_refuses_layer_without_source(pm, tmp_path):
    meta = {"name": "drawn", "scale": (1.0, 1.0, 1.0), "translate": (0.0, 0.0, 0.0), "metadata": {}}
    with pytest.raises(ExportError, match="source grid"):
        npe2.write(str(tmp_path / "x.nii.gz"), [(np.zeros((3, 4, 5), np.uint8), meta, "labels")],
                   plugin_name=PLUGIN)
    assert not (tmp_path / "x.nii.gz").exists()


# ------------------------------------------------------------------ viewer: sample, widgets
@pytest.mark.gui
def test_sample_data_opens_demo_ct(pm, make_napari_viewer):
    from medsam_gui.config import demo_scan_path

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "demo_ct")
    assert len(viewer.layers) == 1
    layer = viewer.layers[0]
    img = sitk.ReadImage(str(demo_scan_path()))
    ref = lps_display(img)
    assert layer.name == "example_ct_sm"
    np.testing.assert_allclose(layer.scale, ref.GetSpacing()[::-1], rtol=1e-6)
    np.testing.assert_allclose(layer.translate, ref.GetOrigin()[::-1], atol=1e-4)
    assert layer.data.shape == sitk.GetArrayFromImage(ref).shape


@pytest.mark.gui
def test_widgets_work_on_the_viewers_layers(pm, make_napari_viewer, data_dir, tmp_path, qtbot):
    from medsam_gui.gui.labels_panel import LabelsPanel
    from medsam_gui.gui.measurements_panel import MeasurementsPanel
    from medsam_gui.gui.medsam_panel import MedSAMPanel
    from medsam_gui.gui.universeg_panel import UniversegPanel

    viewer = make_napari_viewer()
    (image,) = viewer.open(str(data_dir / HIPPO), plugin=PLUGIN)
    _, labels_w = viewer.window.add_plugin_dock_widget(PLUGIN, "Labels")
    _, medsam_w = viewer.window.add_plugin_dock_widget(PLUGIN, "MedSAM")
    _, meas_w = viewer.window.add_plugin_dock_widget(PLUGIN, "Measurements")
    _, useg_w = viewer.window.add_plugin_dock_widget(PLUGIN, "UniverSeg")
    assert isinstance(labels_w, LabelsPanel) and isinstance(medsam_w, MedSAMPanel)
    assert isinstance(meas_w, MeasurementsPanel) and isinstance(useg_w, UniversegPanel)
    c = labels_w.controller
    assert medsam_w.controller is c and meas_w.controller is c and useg_w.controller is c
    assert c.window is None
    # the reader's image layer is adopted as is; a labels layer on its grid was added
    assert c.image_layer is image and c.volume is image.metadata["medsam_gui"]["volume"]
    labels = c.labels_layer
    assert labels in viewer.layers and labels.data.shape == image.data.shape
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, image.translate)
    assert medsam_w.propagation_box.to_spin.maximum() == image.data.shape[0] - 1  # MedSAM sees the scan's slices

    # Labels widget: "Add" adds a label to the table, and it becomes the one napari paints with
    n = labels_w.table.rowCount()
    labels_w.add_button.click()
    assert labels_w.table.rowCount() == n + 1
    new_value = c.active_label
    assert labels.selected_label == new_value

    # an edit through the controller lands in the viewer's labels layer; Measurements follows it
    mid = c.current_slice(0)
    mask = np.zeros(image.data.shape[1:], bool)
    mask[10:20, 8:18] = True
    assert c.write_slice_mask(0, mid, mask, new_value) == 100
    assert int(np.count_nonzero(labels.data == new_value)) == 100
    with qtbot.waitSignal(meas_w.refreshed, timeout=10000):
        meas_w.refresh()
    (row,) = meas_w.row_values()
    assert row["Label"] == str(new_value)
    assert float(row["Volume (mL)"]) == pytest.approx(100 * np.prod(c.volume.spacing) / 1000, rel=0.05)

    # napari's own save of that layer goes through the writer onto the source grid
    out = tmp_path / "drawn.nii.gz"
    viewer.layers.selection.active = labels
    viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    back = sitk.ReadImage(str(out))
    src = sitk.ReadImage(str(data_dir / HIPPO))
    assert back.GetSize() == src.GetSize() and back.GetDirection() == pytest.approx(src.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), c.source_labels())
    from medsam_gui.io import read_label_description

    names = read_label_description(tmp_path / "drawn.label")  # the widget's names went along
    assert names.get(new_value).name == c.label_table.get(new_value).name
    # the adopted layer's edits are undoable through the controller (and napari's Ctrl+Z)
    c.undo()
    assert not np.any(labels.data == new_value)
    c.redo()
    assert int(np.count_nonzero(labels.data == new_value)) == 100
    # quitting napari shuts the controller down: the panels' threads end with it
    from medsam_gui.gui.shutdown import background_threads

    medsam_w.service.set_focus(mid)  # the decoder thread runs
    assert background_threads()
    c.shutdown()
    assert background_threads() == []


@pytest.mark.gui
def test_widget_adopts_scans_and_label_maps_opened_later(pm, make_napari_viewer, data_dir, permuted_mha):
    viewer = make_napari_viewer()
    _, labels_w = viewer.window.add_plugin_dock_widget(PLUGIN, "Labels")
    c = labels_w.controller
    assert c.volume is None and not labels_w.add_button.isEnabled()
    (image,) = viewer.open(str(data_dir / HIPPO), plugin=PLUGIN)
    assert c.image_layer is image and labels_w.add_button.isEnabled()
    # a label map on the same grid becomes the controller's labels (and table)
    (seg,) = viewer.open(str(data_dir / HIPPO_LABEL), plugin=PLUGIN)
    assert c.labels_layer is seg
    assert c.label_table.values() == [1, 2]
    np.testing.assert_array_equal(c.source_labels(),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / HIPPO_LABEL))))
    # another scan replaces it
    (other,) = viewer.open(str(permuted_mha), plugin=PLUGIN)
    assert c.image_layer is other and c.volume.path == str(permuted_mha)
    assert c.labels_layer is not seg and not c.labels_layer.data.any()
    # the same scan opened again works on the label map file open on its grid
    (again,) = viewer.open(str(data_dir / HIPPO), plugin=PLUGIN)
    assert c.image_layer is again and c.volume is again.metadata["medsam_gui"]["volume"]
    assert c.labels_layer is seg
    # without a label map file it gets labels of its own, not those made for the other copy
    viewer.layers.remove(seg)
    made_for_first = [layer for layer in viewer.layers if isinstance(layer, napari.layers.Labels)
                      and layer.metadata["medsam_gui"]["volume"] is image.metadata["medsam_gui"]["volume"]]
    assert len(made_for_first) == 1
    (third,) = viewer.open(str(data_dir / HIPPO), plugin=PLUGIN)
    assert c.image_layer is third and c.labels_layer not in made_for_first
    assert c.labels_layer.metadata["medsam_gui"]["volume"] is c.volume


@pytest.mark.gui
def test_writer_finds_the_scan_of_a_napari_made_labels_layer(pm, make_napari_viewer, data_dir, tmp_path):
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(data_dir / BRAIN_NRRD), plugin=PLUGIN)
    drawn = np.zeros(image.data.shape, np.uint8)
    drawn[12, 100:110, 90:95] = 3
    layer = viewer.add_labels(drawn, scale=image.scale, translate=image.translate)  # no metadata
    out = tmp_path / "drawn.nrrd"
    viewer.layers.selection.active = layer
    viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    back = sitk.ReadImage(str(out))
    src = sitk.ReadImage(str(data_dir / BRAIN_NRRD))
    assert back.GetSize() == src.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), src.GetOrigin(), atol=1e-4)
    ref = lps_display(back)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ref), drawn)
    assert not (tmp_path / "drawn.label").exists()  # no widget, no label names
