"""The full-size many-structure phantom, at a reduced size over the same field of view: every
structure is there, where and how large its shape says, with its own HU value."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.demo.large_phantom import LARGE_STRUCTURES, large_anatomy, make_large_phantom
from medseg.demo.phantom import TISSUE_HU
from medseg.errors import PhantomError

FIELD_OF_VIEW = {"shape": (128, 128, 100), "spacing_mm": (3.2, 3.2, 4.0)}  # 410 x 410 x 400 mm


def test_every_structure_is_drawn_with_its_label_and_hu_at_its_place() -> None:
    ct, labels, names = make_large_phantom(seed=1, noise_sigma_hu=0.0, **FIELD_OF_VIEW)
    assert len(names) == LARGE_STRUCTURES + 1 and names[1] == "liver"
    values = labels.array
    assert sorted(np.unique(values)) == sorted(names)
    anatomy = large_anatomy(1, half_extent_mm=(204.8, 204.8, 200.0))
    voxel_ml = 3.2 * 3.2 * 4.0 / 1000
    inverse = np.linalg.inv(labels.affine_ras)
    for organ in anatomy.structures:
        inside = values == organ.label
        assert np.all(ct.array[inside] == organ.hu)
        centre = np.rint(inverse[:3, :3] @ organ.shape.center_mm + inverse[:3, 3]).astype(int)
        assert values[tuple(centre)] == organ.label  # the shape sits where its anatomy says
        if organ.shape.volume_ml > 100 * voxel_ml:  # voxelised volume of the larger ones
            assert inside.sum() * voxel_ml == pytest.approx(organ.shape.volume_ml, rel=0.06)
    body = ct.array != TISSUE_HU["air"]
    assert body[:, :, 0].any() and body[:, :, -1].any()  # the body spans the scan
    assert not body[0].any() and not body[:, 0].any()  # and air surrounds it in-plane
    assert ct.array.dtype == np.int16 and labels.array.dtype == np.uint8


def test_the_same_seed_gives_the_same_phantom_and_too_many_structures_are_refused() -> None:
    first = make_large_phantom(seed=3, structures=40, **FIELD_OF_VIEW)
    again = make_large_phantom(seed=3, structures=40, **FIELD_OF_VIEW)
    assert np.array_equal(first[0].array, again[0].array)
    assert len(np.unique(first[1].array)) == 41
    with pytest.raises(PhantomError, match="5 to 255"):
        large_anatomy(0, structures=300)
    with pytest.raises(PhantomError, match="small structures in this field of view"):
        large_anatomy(0, structures=250, half_extent_mm=(204.8, 204.8, 40.0))
