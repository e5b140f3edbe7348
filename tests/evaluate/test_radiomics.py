"""Radiomics features: shapes with known values (sphere, cube, ellipsoid), first-order features
against numpy/scipy, and every feature against PyRadiomics' own values on one phantom."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.transform import Rotation

from medseg.errors import GeometryMismatchError
from medseg.evaluate.radiomics import (
    FEATURE_NAMES,
    RadiomicsSettings,
    firstorder_features,
    structure_radiomics,
)
from medseg.volume import Volume


def _features(labels: np.ndarray, affine: np.ndarray, image: np.ndarray | None = None) -> dict:
    scan = Volume(labels.astype(np.float32) if image is None else image, affine)
    return structure_radiomics(Volume(labels, affine), scan, label_names={1: "s"})["s"]


def _ellipsoid(spacing: tuple[float, ...], semi_mm: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """A voxelised solid ellipsoid (voxel centres inside) and its grid's affine."""
    step, semi = np.asarray(spacing), np.asarray(semi_mm, np.float64)
    shape = tuple(int(n) for n in np.ceil(2 * semi / step) + 6)
    grid = np.indices(shape).astype(np.float64)
    centre = (np.asarray(shape) - 1) / 2
    inside = sum(((grid[i] - centre[i]) * step[i] / semi[i]) ** 2 for i in range(3)) <= 1.0
    return inside.astype(np.uint8), np.diag([*step, 1.0])


@pytest.mark.parametrize(
    ("spacing", "area_ratio", "sphericity"),
    [((1.0, 1.0, 1.0), (1.08, 1.10), (0.90, 1.0)), ((0.8, 0.8, 2.0), (1.13, 1.16), (0.86, 0.89))],
    ids=["1mm", "0.8x0.8x2mm"],
)
def test_a_sphere_has_its_volume_area_sphericity_diameter_and_axes(
    spacing: tuple[float, ...], area_ratio: tuple[float, float], sphericity: tuple[float, float]
) -> None:
    radius = 20.0
    labels, affine = _ellipsoid(spacing, (radius,) * 3)
    features = _features(labels, affine)
    assert features["original_shape_VoxelVolume"] == pytest.approx(labels.sum() * np.prod(spacing))
    assert features["original_shape_MeshVolume"] == pytest.approx(
        4 / 3 * math.pi * radius**3, rel=0.01
    )
    # marching cubes of a voxel mask cuts the voxels' corners: the area exceeds the smooth
    # sphere's, measured +9.3 % at 1 mm and +14.4 % on 2 mm slices, and the sphericity drops
    # with it (0.915 and 0.873; PyRadiomics' mesh gives the same, see the reference test)
    ratio = features["original_shape_SurfaceArea"] / (4 * math.pi * radius**2)
    assert area_ratio[0] < ratio < area_ratio[1]
    assert sphericity[0] <= features["original_shape_Sphericity"] <= sphericity[1]
    assert features["original_shape_SurfaceVolumeRatio"] == pytest.approx(
        features["original_shape_SurfaceArea"] / features["original_shape_MeshVolume"]
    )
    # the outermost vertices lie on the voxels' faces, up to half a voxel beyond the sphere
    assert 2 * radius < features["original_shape_Maximum3DDiameter"] <= 2 * radius + max(spacing)
    for axis in ("Major", "Minor", "Least"):  # a solid ball's variance per axis is r^2 / 5
        length = features[f"original_shape_{axis}AxisLength"]
        assert length == pytest.approx(4 * radius / math.sqrt(5), rel=0.005)


def test_a_cube_has_the_exact_volume_and_area_of_its_chamfered_mesh() -> None:
    n = 16  # voxels of 1 mm per side
    labels = np.zeros((n + 4,) * 3, np.uint8)
    labels[2 : 2 + n, 2 : 2 + n, 2 : 2 + n] = 1
    features = _features(labels, np.eye(4))
    # The mesh is the n-mm cube with its 12 edges chamfered (legs 0.5 mm) and its 8 corners cut
    # by triangles through the edges' midpoints: exact volume and area of that polyhedron.
    volume = n**3 - 12 * (n - 1) / 8 - 8 * 5 / 48
    area = 6 * (n - 1) ** 2 + 6 * math.sqrt(2) * (n - 1) + math.sqrt(3)
    assert features["original_shape_VoxelVolume"] == n**3
    assert features["original_shape_MeshVolume"] == pytest.approx(volume, rel=1e-6)
    assert features["original_shape_SurfaceArea"] == pytest.approx(area, rel=1e-6)
    exact_sphericity = (36 * math.pi * volume**2) ** (1 / 3) / area  # 0.8339
    assert features["original_shape_Sphericity"] == pytest.approx(exact_sphericity, rel=1e-6)
    # chamfering rounds it a little: above a sharp cube's (pi / 6)^(1/3) = 0.806
    assert features["original_shape_Sphericity"] > (math.pi / 6) ** (1 / 3)
    assert features["original_shape_Maximum3DDiameter"] == pytest.approx(
        math.dist((0, 0.5, 0.5), (n, n - 0.5, n - 0.5))  # corner triangles, opposite vertices
    )
    assert features["original_shape_Elongation"] == pytest.approx(1.0)
    assert features["original_shape_Flatness"] == pytest.approx(1.0)


def test_an_ellipsoid_has_its_volume_axis_lengths_elongation_and_flatness() -> None:
    a, b, c = 18.0, 12.0, 8.0
    labels, affine = _ellipsoid((1.0, 0.9, 1.2), (b, a, c))  # the longest axis along y
    features = _features(labels, affine)
    assert features["original_shape_MeshVolume"] == pytest.approx(
        4 / 3 * math.pi * a * b * c, rel=0.01
    )
    # IBSI's axis lengths are 4 sqrt(lambda) of the voxel centres' covariance: for a solid
    # ellipsoid 4 a / sqrt(5) = 1.79 a (2 a would be a filled ellipse's, in 2D)
    for axis, semi in (("Major", a), ("Minor", b), ("Least", c)):
        length = features[f"original_shape_{axis}AxisLength"]
        assert length == pytest.approx(4 * semi / math.sqrt(5), rel=0.01)
    assert features["original_shape_Elongation"] == pytest.approx(b / a, rel=0.01)
    assert features["original_shape_Flatness"] == pytest.approx(c / a, rel=0.01)


def test_first_order_features_equal_numpy_and_scipy() -> None:
    intensities = np.arange(-30.0, 70.0)  # 100 values: bins of 25 from -50 hold 5, 25, 25, 25, 20
    rng = np.random.default_rng(3)
    rng.shuffle(intensities)
    features = firstorder_features(intensities, voxel_mm3=2.5)
    p = np.array([5, 25, 25, 25, 20]) / 100
    p10, p25, p75, p90 = np.percentile(intensities, [10, 25, 75, 90])
    robust = intensities[(intensities >= p10) & (intensities <= p90)]
    expected = {
        "Energy": float((intensities**2).sum()),
        "TotalEnergy": float((intensities**2).sum()) * 2.5,
        "Entropy": float(-(p * np.log2(p)).sum()),
        "Minimum": -30.0,
        "10Percentile": -20.1,
        "90Percentile": 59.1,
        "Maximum": 69.0,
        "Mean": 19.5,
        "Median": 19.5,
        "InterquartileRange": 49.5,
        "Range": 99.0,
        "MeanAbsoluteDeviation": 25.0,  # |i - 49.5| for i in 0..99, averaged
        "RobustMeanAbsoluteDeviation": float(np.abs(robust - robust.mean()).mean()),
        "RootMeanSquared": float(np.sqrt(np.mean(intensities**2))),
        "Skewness": float(stats.skew(intensities)),
        "Kurtosis": float(stats.kurtosis(intensities, fisher=False)),
        "Variance": float(np.var(intensities)),  # (100^2 - 1) / 12
        "Uniformity": float((p**2).sum()),
    }
    assert expected["InterquartileRange"] == pytest.approx(p75 - p25)
    assert features == pytest.approx(expected, abs=1e-9)
    n = 100  # a discrete uniform distribution's kurtosis, not excess
    assert features["Kurtosis"] == pytest.approx(3 - 6 * (n**2 + 1) / (5 * (n**2 - 1)))
    assert features["Skewness"] == pytest.approx(0.0, abs=1e-12)
    assert features["Variance"] == pytest.approx(833.25)


def test_bin_width_and_shift_change_entropy_and_energy() -> None:
    intensities = np.arange(-30.0, 70.0)
    settings = RadiomicsSettings(bin_width=50.0, voxel_array_shift=30.0)
    features = firstorder_features(intensities, voxel_mm3=1.0, settings=settings)
    p = np.array([30, 50, 20]) / 100  # bins [-50, 0), [0, 50), [50, 100)
    assert features["Entropy"] == pytest.approx(float(-(p * np.log2(p)).sum()))
    assert features["Uniformity"] == pytest.approx(0.38)
    assert features["Energy"] == pytest.approx(float(((intensities + 30) ** 2).sum()))


def test_a_flat_region_has_zero_skewness_kurtosis_and_entropy() -> None:
    features = firstorder_features(np.full(27, 40.0), voxel_mm3=1.0)
    assert features["Skewness"] == 0.0 and features["Kurtosis"] == 0.0
    assert features["Entropy"] == pytest.approx(0.0, abs=1e-12)
    assert features["Uniformity"] == 1.0 and features["Variance"] == 0.0


# PyRadiomics' values on the phantom below, computed once with PyRadiomics v3.0.1 (built from
# its source distribution in a separate venv; not a dependency of medseg), default settings,
# shape and firstorder classes, image and mask as SimpleITK images of spacing (0.8, 0.9, 2.0).
PYRADIOMICS_3_0_1 = {
    1: {
        "shape_MeshVolume": 3816.7199999999484,
        "shape_VoxelVolume": 3841.9200000000005,
        "shape_SurfaceArea": 1337.5710609293214,
        "shape_SurfaceVolumeRatio": 0.3504504026832829,
        "shape_Sphericity": 0.8830001843688633,
        "shape_Maximum3DDiameter": 22.82805291740844,
        "shape_MajorAxisLength": 19.336521131663282,
        "shape_MinorAxisLength": 18.781546974267783,
        "shape_LeastAxisLength": 14.452527883345889,
        "shape_Elongation": 0.971299172502817,
        "shape_Flatness": 0.7474213062907203,
        "firstorder_Energy": 3519693.8662143657,
        "firstorder_TotalEnergy": 5068359.167348688,
        "firstorder_Entropy": 2.5675361520368165,
        "firstorder_Minimum": -92.97000122070312,
        "firstorder_10Percentile": -44.09999923706055,
        "firstorder_90Percentile": 51.276000595092775,
        "firstorder_Maximum": 91.68000030517578,
        "firstorder_Mean": 6.131604198857896,
        "firstorder_Median": 8.724999904632568,
        "firstorder_InterquartileRange": 50.11250114440918,
        "firstorder_Range": 184.6500015258789,
        "firstorder_MeanAbsoluteDeviation": 28.967382330419433,
        "firstorder_RobustMeanAbsoluteDeviation": 20.55646947582408,
        "firstorder_RootMeanSquared": 36.32114517793828,
        "firstorder_Skewness": -0.31375483080097966,
        "firstorder_Kurtosis": 2.6264014191553837,
        "firstorder_Variance": 1281.629016985417,
        "firstorder_Uniformity": 0.19161577382223433,
    },
    2: {
        "shape_MeshVolume": 29.039999999999996,
        "shape_VoxelVolume": 34.56,
        "shape_SurfaceArea": 51.052139784470384,
        "shape_SurfaceVolumeRatio": 1.7579937942310742,
        "shape_Sphericity": 0.8949551045697782,
        "shape_Maximum3DDiameter": 5.0,
        "shape_MajorAxisLength": 3.999999999999999,
        "shape_MinorAxisLength": 3.5777087639996643,
        "shape_LeastAxisLength": 2.9393876913398134,
        "shape_Elongation": 0.8944271909999162,
        "shape_Flatness": 0.7348469228349535,
        "firstorder_Energy": 53599.635394110155,
        "firstorder_TotalEnergy": 77183.47496751863,
        "firstorder_Entropy": 0.870864469235364,
        "firstorder_Minimum": 33.369998931884766,
        "firstorder_10Percentile": 34.59399909973145,
        "firstorder_90Percentile": 63.261998367309566,
        "firstorder_Maximum": 68.23999786376953,
        "firstorder_Mean": 46.1299999554952,
        "firstorder_Median": 43.880001068115234,
        "firstorder_InterquartileRange": 14.664998054504395,
        "firstorder_Range": 34.869998931884766,
        "firstorder_MeanAbsoluteDeviation": 8.591666287846037,
        "firstorder_RobustMeanAbsoluteDeviation": 5.9465426692256225,
        "firstorder_RootMeanSquared": 47.25799552902404,
        "firstorder_Skewness": 0.6813357657241329,
        "firstorder_Kurtosis": 2.396480273260701,
        "firstorder_Variance": 105.34124552726944,
        "firstorder_Uniformity": 0.5868055555555556,
    },
}


def _reference_phantom() -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoid (1) and a small box (2) on a 0.8 x 0.9 x 2 mm grid, intensities a smooth
    pattern with HU-like values."""
    i, j, k = np.indices((34, 26, 14)).astype(np.float64)
    inside = ((i - 16.5) / 13) ** 2 + ((j - 12.0) / 9) ** 2 + ((k - 6.5) / 5.5) ** 2 <= 1.0
    labels = inside.astype(np.uint8)
    labels[2:6, 2:5, 1:3] = 2
    hu = np.round(40 + 35 * np.sin(0.7 * i) * np.cos(0.45 * j) + 4.0 * k - 0.3 * i * j, 2)
    return labels, hu.astype(np.float32)


@pytest.mark.parametrize("rotated", [False, True], ids=["axial", "oblique"])
def test_every_feature_equals_pyradiomics(rotated: bool) -> None:
    labels, hu = _reference_phantom()
    affine = np.diag([0.8, 0.9, 2.0, 1.0])
    if rotated:  # the same voxels, turned and mirrored in the scanner: the same features
        turn = Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix()
        affine[:3, :3] = turn @ np.diag([-1.0, 1.0, 1.0]) @ affine[:3, :3]
        affine[:3, 3] = [-120.0, 40.0, 300.0]
    names = {1: "ellipsoid", 2: "box", 3: "absent"}
    found = structure_radiomics(Volume(labels, affine), Volume(hu, affine), label_names=names)
    for value, name in ((1, "ellipsoid"), (2, "box")):
        assert list(found[name]) == list(FEATURE_NAMES)
        reference = {f"original_{k}": v for k, v in PYRADIOMICS_3_0_1[value].items()}
        # the mesh's vertices are float32 scanner mm (hundreds of mm from the origin): 1e-5
        assert found[name] == pytest.approx(reference, rel=1e-5)


def test_an_absent_structure_is_listed_with_nan_features() -> None:
    labels, hu = _reference_phantom()
    affine = np.diag([0.8, 0.9, 2.0, 1.0])
    names = {0: "background", 1: "ellipsoid", 7: "absent"}
    found = structure_radiomics(Volume(labels, affine), Volume(hu, affine), label_names=names)
    assert list(found) == ["ellipsoid", "absent"]
    assert list(found["absent"]) == list(FEATURE_NAMES)
    assert all(math.isnan(v) for v in found["absent"].values())


def test_a_scan_on_another_grid_is_refused() -> None:
    labels, hu = _reference_phantom()
    with pytest.raises(GeometryMismatchError, match="different grids"):
        structure_radiomics(
            Volume(labels, np.diag([0.8, 0.9, 2.0, 1.0])),
            Volume(hu, np.diag([0.8, 0.9, 2.5, 1.0])),
            label_names={1: "ellipsoid"},
        )
