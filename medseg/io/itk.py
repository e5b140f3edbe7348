"""NRRD and MetaImage files (3D Slicer, ITK-SNAP) read and written through SimpleITK.

Geometry follows ``medseg.volume``, so a scan saved as NIfTI, NRRD or MetaImage reads as the
same ``Volume``. ITK keeps a physical point in LPS millimetres as
``origin + direction @ diag(spacing) @ (i, j, k)`` and its voxel arrays in ``[z, y, x]`` order;
medseg's affine maps ``(i, j, k, 1)`` to RAS, so

    affine_ras[:3, :3] = diag(-1, -1, 1) @ direction @ diag(spacing)
    affine_ras[:3, 3]  = diag(-1, -1, 1) @ origin

and the array is transposed. Oblique (non-diagonal) directions pass through unchanged; the
pixel type is kept (booleans are written as uint8 and float64 as float32, as NIfTI does).

What is refused, naming the file: 2D images, images of more than 4 dimensions, complex pixels,
4D images whose fourth axis is tilted into space, a 4D image of vector pixels. Vector pixels
(several components per voxel) become the fourth array axis, as a 4D NIfTI's volumes do. A
detached header (``.nhdr``, ``.mhd``) whose data file is missing names the missing file.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medseg.errors import InvalidAffineError, VolumeFileError
from medseg.io.atomic import TEMPORARY_PREFIX
from medseg.volume import Volume, validate_affine

if TYPE_CHECKING:
    import SimpleITK as sitk  # at run time imported inside the functions that use it

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_HEADER_BYTES = 1 << 16  # enough for any header medseg meets; the rest is voxels
_ITK_PREFIX = re.compile(r"^(?:itk::ERROR|ITK ERROR):\s*\w+\(0x[0-9a-f]+\):\s*", re.IGNORECASE)


def itk_geometry_to_affine(
    origin: tuple[float, ...], spacing: tuple[float, ...], direction: tuple[float, ...]
) -> np.ndarray:
    """The RAS affine of a 3D ITK image's origin, spacing and (row-major) direction."""
    linear = np.asarray(direction, float).reshape(3, 3) @ np.diag(np.asarray(spacing, float))
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ linear
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(origin, float)
    return affine


def affine_to_itk_geometry(
    affine_ras: np.ndarray,
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """``(origin, spacing, direction)`` of an ITK image with the RAS affine ``affine_ras``."""
    linear = _LPS_TO_RAS @ np.asarray(affine_ras, float)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    direction = linear / spacing
    origin = _LPS_TO_RAS @ np.asarray(affine_ras, float)[:3, 3]
    return (
        tuple(float(v) for v in origin),
        tuple(float(v) for v in spacing),
        tuple(float(v) for v in direction.ravel()),
    )


def _itk_reason(error: RuntimeError) -> str:
    """The useful last line of a SimpleITK/ITK exception (no C++ source locations)."""
    lines = [
        _ITK_PREFIX.sub("", line).strip()
        for line in str(error).splitlines()
        if line.strip() and not line.startswith("Exception thrown in SimpleITK")
    ]
    reason = lines[-1] if lines else str(error)
    return re.sub(r"^\[\w+\]\s*\w+:\s*", "", reason)


class ItkFormat:
    """A file format SimpleITK reads and writes with one ImageIO (see the module docstring)."""

    name: str
    suffixes: tuple[str, ...]
    title: str  # how messages name the format
    image_io: str  # SimpleITK ImageIO class: the format follows the name, not the content

    def data_files(self, path: Path) -> tuple[Path, ...]:
        """The data file a (detached) header names; none when the voxels follow the header."""
        try:
            with open(path, "rb") as file:
                head = file.read(_HEADER_BYTES).decode("latin-1")
        except OSError:
            return ()
        value = self._data_file_field(head)
        if value is None or value.upper() in ("LOCAL", "LIST") or "%" in value:
            return ()  # inline voxels, or a list/pattern of files: ITK reports what is missing
        data = Path(value)
        return (data if data.is_absolute() else path.parent / data,)

    def _data_file_field(self, head: str) -> str | None:
        raise NotImplementedError

    def read(self, path: Path) -> Volume:
        """The volume in ``path``, in closest-to-file voxel order (not reoriented).

        Raises:
            VolumeFileError: the file or its data file is missing or unreadable, or it is not
                a 3D image of scalar or vector pixels, or its geometry is invalid.
        """
        import SimpleITK as sitk

        path = Path(path)
        if not path.is_file():
            raise VolumeFileError(path, "file not found")
        for data in self.data_files(path):
            if not data.is_file():
                raise VolumeFileError(
                    path, f"its data file {data.name} is missing (looked for {data})"
                )
        reader = sitk.ImageFileReader()
        reader.SetImageIO(self.image_io)
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
            self._check_layout(path, reader)
            image = reader.Execute()
        except RuntimeError as error:
            reason = _itk_reason(error)
            raise VolumeFileError(path, f"cannot read {self.title}: {reason}") from error
        array = sitk.GetArrayFromImage(image)
        dimension = image.GetDimension()
        if dimension == 4:
            array = array.transpose(3, 2, 1, 0)
            geometry = _spatial_geometry(path, image)
        elif image.GetNumberOfComponentsPerPixel() > 1:
            array = array.transpose(2, 1, 0, 3)
            geometry = image.GetOrigin(), image.GetSpacing(), image.GetDirection()
        else:
            array = array.transpose(2, 1, 0)
            geometry = image.GetOrigin(), image.GetSpacing(), image.GetDirection()
        while array.ndim > 3 and array.shape[-1] == 1:  # as read_nifti: X x Y x Z x 1 is 3D
            array = array[..., 0]
        try:
            affine = validate_affine(itk_geometry_to_affine(*geometry), source=str(path))
        except InvalidAffineError as error:
            raise VolumeFileError(path, str(error)) from error
        array = np.ascontiguousarray(array)
        if array.dtype.byteorder not in ("=", "|"):
            array = array.astype(array.dtype.newbyteorder("="))
        return Volume(array, affine, {"source_format": self.name, "corrections": []})

    def _check_layout(self, path: Path, reader: sitk.ImageFileReader) -> None:
        import SimpleITK as sitk

        dimension, components = reader.GetDimension(), reader.GetNumberOfComponents()
        size = "x".join(str(n) for n in reader.GetSize())
        if dimension < 3:
            raise VolumeFileError(path, f"a {dimension}D image ({size}): medseg needs 3D scans")
        if dimension > 4 or (dimension == 4 and components > 1):
            raise VolumeFileError(
                path,
                f"a {dimension}D image ({size}) of {components} component(s) per voxel: "
                "medseg reads 3D images, with per-voxel channels as a 4th axis",
            )
        if reader.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
            raise VolumeFileError(path, "complex pixels: medseg reads real-valued images")

    def write(self, volume: Volume, path: Path) -> Path:
        """Write ``volume`` to ``path`` (compressed) atomically; return the path.

        A detached header (``.nhdr``, ``.mhd``) gets its data file beside it, moved into place
        before the header. Raises ``VolumeFileError`` for arrays of other than 3 or 4 axes.

        Raises:
            VolumeFileError: an array of other than 3 or 4 axes, or SimpleITK cannot write it.
        """
        import SimpleITK as sitk

        path = Path(path)
        array = volume.array
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        if array.ndim == 3:
            image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
        elif array.ndim == 4:
            voxels = np.ascontiguousarray(array.transpose(2, 1, 0, 3))
            image = sitk.GetImageFromArray(voxels, isVector=True)
        else:
            raise VolumeFileError(path, f"cannot write a {array.ndim}D array as {self.title}")
        origin, spacing, direction = affine_to_itk_geometry(volume.affine_ras)
        image.SetOrigin(origin)
        image.SetSpacing(spacing)
        image.SetDirection(direction)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}{path.name}-", dir=path.parent))
        try:
            writer = sitk.ImageFileWriter()
            writer.SetImageIO(self.image_io)
            writer.SetFileName(str(staging / path.name))
            writer.SetUseCompression(True)
            try:
                writer.Execute(image)
            except RuntimeError as error:
                reason = _itk_reason(error)
                raise VolumeFileError(path, f"cannot write {self.title}: {reason}") from error
            for written in sorted(staging.iterdir(), key=lambda p: p.name == path.name):
                os.replace(written, path.parent / written.name)  # the header last
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return path


def _spatial_geometry(path: Path, image: sitk.Image) -> tuple[tuple, tuple, tuple]:
    """Origin, spacing and direction of the first three axes of a 4D image."""
    direction = np.asarray(image.GetDirection(), float).reshape(4, 4)
    if np.any(np.abs(direction[:3, 3]) > 1e-6) or np.any(np.abs(direction[3, :3]) > 1e-6):
        raise VolumeFileError(path, "a 4D image whose 4th axis is tilted into space")
    return (
        tuple(image.GetOrigin()[:3]),
        tuple(image.GetSpacing()[:3]),
        tuple(direction[:3, :3].ravel()),
    )


class NrrdFormat(ItkFormat):
    """NRRD: one ``.nrrd`` file, or a ``.nhdr`` header and its data file."""

    name = "nrrd"
    suffixes = (".nrrd", ".nhdr")
    title = "NRRD"
    image_io = "NrrdImageIO"

    def _data_file_field(self, head: str) -> str | None:
        for line in head.splitlines()[1:]:
            if not line.strip():
                return None  # end of the header
            key, _, value = line.partition(":")
            if key.strip().lower() in ("data file", "datafile"):
                return value.strip()
        return None


class MetaImageFormat(ItkFormat):
    """MetaImage: one ``.mha`` file, or a ``.mhd`` header and its data file."""

    name = "mha"
    suffixes = (".mha", ".mhd")
    title = "MetaImage"
    image_io = "MetaImageIO"

    def _data_file_field(self, head: str) -> str | None:
        for line in head.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "ElementDataFile":
                return value.strip()
        return None


NRRD = NrrdFormat()
METAIMAGE = MetaImageFormat()
