"""MedSAM2 transforms and engine argument checks (no network run)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medsam_gui.errors import MedsamGuiError
from medsam_gui.models.medsam2.engine import MedSAM2Engine, expected_shapes
from medsam_gui.models.medsam2.preprocessing import (box_to_model, largest_component, recist_box, slice_to_input,
                                                     window_to_uint8)


def test_window_to_uint8_uses_the_clipped_volume_extremes():
    v = np.array([[[-2000, -1024], [-512, 100]]], dtype=np.int16)
    u = window_to_uint8(v, (-1500, 0))
    # clipped to [-1500, 0] -> min -1500, max 0
    assert u.dtype == np.uint8 and u.tolist() == [[[0, 80], [167, 255]]]  # 476/1500*255=80.9, 988/1500*255=167.96
    v2 = np.array([[[-1024, -512], [0, 50]]], dtype=np.int16)
    assert window_to_uint8(v2, (-1500, 0)).tolist() == [[[0, 127], [255, 255]]]  # min-max -1024..0
    assert not window_to_uint8(np.full((2, 3, 3), 7), (0, 10)).any()


def test_slice_to_input_normalisation_and_resize():
    x = slice_to_input(np.full((512, 512), 128, np.uint8))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for c in range(3):
        expect = (128 / 255 - np.float32(mean[c])) / np.float32(std[c])
        assert torch.allclose(x[c], torch.full((512, 512), float(expect)), atol=1e-6)
    y = slice_to_input(np.full((100, 300), 128, np.uint8))  # resized, values kept
    assert y.shape == (3, 512, 512) and torch.allclose(y, x, atol=1e-6)
    ramp = np.tile(np.arange(256, dtype=np.uint8), (64, 1))
    z = slice_to_input(ramp)
    assert z.shape == (3, 512, 512) and float(z[0, 0, 0]) < float(z[0, 0, -1])


def test_box_and_recist_geometry():
    pts, labels = box_to_model((10, 20, 110, 220), (400, 200))  # H=400, W=200
    assert labels.tolist() == [[2, 3]]
    assert torch.allclose(pts, torch.tensor([[[25.6, 25.6], [281.6, 281.6]]]))
    # the official RECIST box: square around the midpoint, half side int(|p1-p0|/2)
    assert recist_box((100, 100), (130, 140), (512, 512)).tolist() == [90, 95, 140, 145]
    assert recist_box((0, 0), (10, 0), (512, 512)).tolist() == [0, 0, 10, 5]


def test_largest_component_is_26_connected():
    m = np.zeros((3, 5, 5), bool)
    m[0, 0, 0] = m[1, 1, 1] = m[2, 2, 2] = True  # diagonal chain: one 26-component
    m[0, 4, 4] = m[0, 4, 3] = True
    out = largest_component(m)
    assert out.sum() == 3 and out[2, 2, 2] and not out[0, 4, 4]
    assert not largest_component(np.zeros((2, 2, 2), bool)).any()


@pytest.fixture(scope="module")
def engine():
    return MedSAM2Engine({k: torch.zeros(s) for k, s in expected_shapes().items()}, device="cpu")


def test_engine_argument_errors(engine):
    vol = np.zeros((5, 64, 64), np.uint8)
    with pytest.raises(MedsamGuiError, match="exactly one prompt"):
        engine.segmentation(vol, 2)
    with pytest.raises(MedsamGuiError, match="exactly one prompt"):
        engine.segmentation(vol, 2, (1, 1, 5, 5), mask=np.ones((64, 64), bool))
    with pytest.raises(MedsamGuiError, match="outside the z-range"):
        engine.segmentation(vol, 4, (1, 1, 5, 5), z_range=(0, 2))
    with pytest.raises(MedsamGuiError, match="outside the scan"):
        engine.segmentation(vol, 9, (1, 1, 5, 5))
    with pytest.raises(MedsamGuiError, match="x0 <= x1"):
        engine.segmentation(vol, 2, (5, 1, 1, 5))
    with pytest.raises(MedsamGuiError, match="key mask must be 64x64"):
        engine.segmentation(vol, 2, mask=np.ones((32, 32), bool))
    with pytest.raises(MedsamGuiError, match="two points"):
        engine.segmentation(vol, 2, recist=(1, 2, 3))
    with pytest.raises(MedsamGuiError, match="zero length"):
        engine.segmentation(vol, 2, recist=((3, 3), (3, 3)))
    with pytest.raises(MedsamGuiError, match="window"):
        engine.segmentation(vol.astype(np.int16), 2, (1, 1, 5, 5))
    with pytest.raises(MedsamGuiError, match="3D volume"):
        engine.segmentation(vol[0], 2, (1, 1, 5, 5))
