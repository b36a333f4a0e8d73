"""Volumes and RECIST diameters (core/measurements.py) on synthetic ellipsoids and real labels."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
import SimpleITK as sitk

from medsam_gui.core.measurements import CSV_COLUMNS, measure_labels, recist_axes, to_csv


def ellipsoid(shape_zyx, centre_xyz_px, semi_mm, theta, spacing_xyz):
    """Bool (z, y, x) ellipsoid: semi-axes (a, b, c) mm, a/b rotated in-plane by theta (rad)."""
    sx, sy, sz = spacing_xyz
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape_zyx), indexing="ij")
    X = (xx - centre_xyz_px[0]) * sx
    Y = (yy - centre_xyz_px[1]) * sy
    Z = (zz - centre_xyz_px[2]) * sz
    u = X * math.cos(theta) + Y * math.sin(theta)
    v = -X * math.sin(theta) + Y * math.cos(theta)
    a, b, c = semi_mm
    return (u / a) ** 2 + (v / b) ** 2 + (Z / c) ** 2 <= 1.0


def pixel_extent(direction_xy, sx, sy):
    """A pixel's extent (mm) along a unit direction: |ux| sx + |uy| sy."""
    return abs(direction_xy[0]) * sx + abs(direction_xy[1]) * sy


# (spacing xyz, semi-axes mm, in-plane rotation degrees, centre offset px)
CASES = [
    ((0.7, 0.7, 3.0), (21.0, 12.5, 15.0), 30.0, (0.3, -0.2)),
    ((0.7, 0.7, 3.0), (17.3, 9.1, 12.0), 125.0, (0.0, 0.4)),
    ((0.5, 1.0, 2.5), (19.0, 11.2, 10.0), 60.0, (-0.3, 0.1)),
    ((0.5, 1.0, 2.5), (24.6, 8.4, 10.0), 160.0, (0.2, 0.25)),
]


@pytest.mark.parametrize("spacing, semi, deg, off", CASES)
def test_ellipsoid_volume_and_recist_within_half_a_voxel(spacing, semi, deg, off):
    shape = (15, 64, 110)
    centre = (55 + off[0], 32 + off[1], 7)  # z centre on a slice centre: slice 7 is the equator
    theta = math.radians(deg)
    m = ellipsoid(shape, centre, semi, theta, spacing)
    labels = m.astype(np.uint8) * 4
    (res,) = measure_labels(labels, spacing, {4: "tumour"})
    sx, sy, sz = spacing
    assert res.value == 4 and res.name == "tumour"
    assert res.voxels == int(m.sum())
    assert res.volume_ml == pytest.approx(m.sum() * sx * sy * sz / 1000.0, rel=1e-12)
    zs = np.flatnonzero(m.any(axis=(1, 2)))
    assert res.slice_range == (zs[0], zs[-1])
    assert res.axial_slice == 7
    u = (math.cos(theta), math.sin(theta))
    v = (-math.sin(theta), math.cos(theta))
    assert abs(res.long_axis_mm - 2 * semi[0]) <= 0.5 * pixel_extent(u, sx, sy)
    assert abs(res.short_axis_mm - 2 * semi[1]) <= 0.5 * pixel_extent(v, sx, sy)
    # endpoints: the long axis runs along the ellipse's major axis, through its centre
    (x0, y0), (x1, y1) = res.long_axis_endpoints
    d = np.array([(x1 - x0) * sx, (y1 - y0) * sy])
    assert math.hypot(*d) == pytest.approx(res.long_axis_mm, rel=1e-9)
    assert abs(np.dot(d / np.linalg.norm(d), u)) > math.cos(math.radians(4))
    mid = ((x0 + x1) / 2, (y0 + y1) / 2)
    assert abs(mid[0] - centre[0]) * sx < 1.0 and abs(mid[1] - centre[1]) * sy < 1.0
    (p0, p1) = res.short_axis_endpoints
    e = np.array([(p1[0] - p0[0]) * sx, (p1[1] - p0[1]) * sy])
    assert math.hypot(*e) == pytest.approx(res.short_axis_mm, rel=1e-9)
    assert abs(np.dot(e, d)) / (np.linalg.norm(e) * np.linalg.norm(d)) < 1e-6  # perpendicular


def test_recist_accuracy_on_many_random_ellipses():
    """Digitisation error statistics: mean error near zero, most within half a pixel."""
    rng = np.random.default_rng(7)
    errs_long, errs_short = [], []
    for sx, sy in [(0.7, 0.7), (0.5, 1.0)]:
        for _ in range(40):
            a = rng.uniform(8, 30)
            b = rng.uniform(4, 0.8 * a)
            th = rng.uniform(0, math.pi)
            centre = (100 + rng.uniform(-0.5, 0.5), 100 + rng.uniform(-0.5, 0.5), 0)
            m = ellipsoid((1, 200, 200), centre, (a, b, 1.0), th, (sx, sy, 1.0))[0]
            long_mm, _, short_mm, _ = recist_axes(m, (sx, sy))
            u = (math.cos(th), math.sin(th))
            v = (-math.sin(th), math.cos(th))
            errs_long.append((long_mm - 2 * a) / pixel_extent(u, sx, sy))
            errs_short.append((short_mm - 2 * b) / pixel_extent(v, sx, sy))
    for errs in (np.array(errs_long), np.array(errs_short)):
        assert abs(errs.mean()) < 0.2
        assert np.mean(np.abs(errs) <= 0.5) >= 0.9
        assert np.abs(errs).max() <= 1.25


def test_short_axis_is_inside_a_concave_mask():
    """An L shape: the perpendicular chord must not bridge the notch."""
    m = np.zeros((60, 60), bool)
    m[10:50, 10:20] = True  # vertical bar, 40 x 10 px
    m[40:50, 10:30] = True  # foot, 10 px tall
    long_mm, (p, q), short_mm, (s0, s1) = recist_axes(m, (1.0, 1.0))
    # every point along the short axis lies in the mask
    for t in np.linspace(0.02, 0.98, 50):
        x = s0[0] + t * (s1[0] - s0[0])
        y = s0[1] + t * (s1[1] - s0[1])
        assert m[int(round(y)), int(round(x))]
    assert long_mm > 40 and short_mm < long_mm


def test_empty_and_single_pixel():
    assert recist_axes(np.zeros((5, 5), bool), (1, 1)) == (0.0, None, 0.0, None)
    m = np.zeros((5, 5), bool)
    m[2, 2] = True
    long_mm, _, short_mm, _ = recist_axes(m, (0.5, 0.5))
    assert 0.3 < long_mm <= 0.75 and 0 < short_mm <= 0.75


def test_real_labels_match_simpleitk(data_dir):
    """Volumes equal SimpleITK's physical size; long axis close to skimage's Feret diameter."""
    from skimage.measure import regionprops

    img = sitk.ReadImage(str(data_dir / "totalsegmentator_example_ct" / "example_seg.nii.gz"))
    labels = sitk.GetArrayFromImage(img)
    res = {r.value: r for r in measure_labels(labels, img.GetSpacing(), values=[2, 3, 5])}
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(img)
    sx, sy, _ = img.GetSpacing()
    for value in (2, 3, 5):
        r = res[value]
        assert r.volume_ml == pytest.approx(stats.GetPhysicalSize(value) / 1000.0, rel=1e-9)
        assert r.voxels == stats.GetNumberOfPixels(value)
        sl = labels[r.axial_slice] == value
        assert sl.sum() == (labels == value).sum(axis=(1, 2)).max()
        feret = max(p.feret_diameter_max for p in regionprops(sl.astype(np.uint8))) * sx
        # skimage's Feret diameter (marching-squares contour of the convex image) agrees to
        # within a pixel
        assert abs(r.long_axis_mm - feret) <= sx
        assert 0 < r.short_axis_mm <= r.long_axis_mm


def test_lung_tumour_and_csv(data_dir, tmp_path):
    img = sitk.ReadImage(str(data_dir / "lung_ct" / "lung1_label.nrrd"))
    labels = sitk.GetArrayFromImage(img)
    (r,) = measure_labels(labels, img.GetSpacing())
    assert r.voxels == 837 and r.slice_range == (32, 34)
    assert r.volume_ml == pytest.approx(837 * 0.5703125 ** 2 * 5.0 / 1000.0, rel=1e-12)
    assert 10 < r.long_axis_mm < 40 and 0 < r.short_axis_mm <= r.long_axis_mm
    out = tmp_path / "m.csv"
    text = to_csv([r], out)
    assert out.read_text(encoding="utf-8") == text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert rows[0]["label"] == "1" and rows[0]["voxels"] == "837" and rows[0]["name"] == "label 1"
    assert float(rows[0]["long_axis_mm"]) == pytest.approx(r.long_axis_mm, abs=1e-3)


def _chords_brute_force(t_values, a, b, u, v):
    """Every line against every edge: the longest even-odd interval per line (first on a tie)."""
    out = []
    for t in t_values:
        s = []
        for p, q in zip(a, b):
            tp, tq = p @ u, q @ u
            if min(tp, tq) <= t < max(tp, tq):
                s.append(p @ v + (t - tp) / (tq - tp) * (q @ v - p @ v))
        s.sort()
        best = (0.0, math.nan, math.nan)
        for k in range(0, len(s) - 1, 2):
            if s[k + 1] - s[k] > best[0]:
                best = (s[k + 1] - s[k], s[k], s[k + 1])
        out.append(best)
    return np.array(out).T


def _polygon_edges(mask):
    """The edges of scikit-image's closed contours of the padded mask at 0.5, as a set of
    undirected (row, col) point pairs."""
    from skimage import measure

    edges = set()
    for c in measure.find_contours(np.pad(mask.astype(float), 1), 0.5):
        c = c - 1.0
        for p, q in zip(c[:-1], c[1:]):
            edges.add(frozenset((tuple(p), tuple(q))))
    return edges


def test_boundary_segments_are_scikit_image_contour_edges():
    """Ragged masks with holes, diagonal-only contacts (saddle cells) and pixels on the border."""
    from medsam_gui.core.measurements import boundary_segments

    rng = np.random.default_rng(7)
    for shape, fill in (((24, 30), 0.5), ((17, 9), 0.7), ((5, 5), 0.3)):
        mask = rng.random(shape) < fill
        a, b = boundary_segments(mask)
        got = {frozenset((tuple(p), tuple(q))) for p, q in zip(a, b)}
        assert len(got) == len(a) and got == _polygon_edges(mask)
    checker = np.indices((6, 6)).sum(0) % 2 == 0  # every contact a corner
    assert len(boundary_segments(checker)[0]) == 4 * checker.sum()


def test_chords_of_a_ragged_mask_with_holes_match_brute_force():
    from medsam_gui.core.measurements import _chords_at, boundary_segments

    rng = np.random.default_rng(3)
    mask = np.zeros((24, 30), bool)
    mask[3:21, 3:27] = rng.random((18, 24)) < 0.7  # many components and holes
    sxy = np.array([0.7, 1.3])
    a, b = (e[:, ::-1] * sxy for e in boundary_segments(mask))
    u = np.array([0.6, 0.8])
    v = np.array([-0.8, 0.6])
    t = np.unique(a @ u) + 1e-7
    got = np.array(_chords_at(t, a, b, u, v))
    want = _chords_brute_force(t, a, b, u, v)
    assert len(a) > 200 and np.count_nonzero(got[0]) > 0.9 * len(t)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
