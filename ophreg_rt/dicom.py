"""DICOM images in and out: the ``dicom`` extra (pydicom), imported only when a DICOM file is met.

Reading (every command and the library reach it through ``imageio.read_image``): one frame of
8- or 16-bit pixels (signed ones shifted to unsigned), MONOCHROME1/2, RGB, YBR_FULL or
YBR_FULL_422, native (any byte order, deflated), RLE, or encapsulated JPEG. JPEG frames are
decoded by OpenCV, which is already a dependency, so the extra stays one pure-Python package:
OpenCV takes baseline, extended (8-bit) and lossless (8-bit) JPEG. What it cannot decode (JPEG
of more than 8 bits, JPEG-LS, JPEG 2000) goes to pydicom's own decoders when their plugins are
installed, and is refused otherwise, naming the file and the transfer syntax. A multi-frame
file is refused by ``read_image``; :func:`read_dicom` takes an explicit ``frame``.

Writing: :func:`derived_instance` makes the warped moving image a new instance of the fixed
image's study (new series and SOP instance UIDs, both sources referenced, the transform in the
derivation description), so that a PACS viewer shows it beside the original.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import io
import json
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .config import MAX_PIXELS, TransformModel
from .errors import ImageReadError, OphregError, OutputWriteError, PatientMismatchError
from .transforms import fitted_from_json

if TYPE_CHECKING:  # pragma: no cover
    from pydicom import Dataset

INSTALL_HINT = 'pip install "ophreg-rt[dicom]"'
#: Files taken for DICOM whatever their first bytes: a dataset written without the 128-byte
#: preamble and "DICM" (allowed on media other than DICOM's own) has no other signature.
SUFFIXES = (".dcm", ".dicom")
_MAGIC_OFFSET = 128

#: Transfer syntaxes whose frames are handed to OpenCV first (UIDs: DICOM PS3.6 annex A).
_JPEG_SYNTAXES = {
    "1.2.840.10008.1.2.4.50",  # baseline, 8-bit
    "1.2.840.10008.1.2.4.51",  # extended, 8- or 12-bit
    "1.2.840.10008.1.2.4.57",  # lossless, process 14
    "1.2.840.10008.1.2.4.70",  # lossless, process 14, first-order prediction
}
_PHOTOMETRICS = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422",
                 # Only JPEG 2000 carries these, and pydicom's decoders return RGB for them.
                 "YBR_ICT", "YBR_RCT")
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


#: ``warnings.catch_warnings`` changes process-wide state: two threads reading DICOM at once
#: (a Registrar is shared between threads) must not undo each other's.
_WARNINGS_LOCK = threading.Lock()


@contextlib.contextmanager
def _pydicom_quiet() -> Iterator[list]:
    """pydicom's warnings, recorded instead of printed: it warns about every leniency it applies,
    while what matters is refused here in one line (the command line keeps stderr to it)."""
    with _WARNINGS_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def is_dicom(path: Path, head: bytes) -> bool:
    """Whether a file is to be read as DICOM: the "DICM" signature, or a DICOM suffix."""
    return bytes(head[_MAGIC_OFFSET:_MAGIC_OFFSET + 4]) == b"DICM" or \
        path.suffix.lower() in SUFFIXES


def require_pydicom(label: str):
    """pydicom, or an error that says how to install it."""
    try:
        import pydicom
    except ImportError:
        raise ImageReadError(f"{label}: a DICOM file; reading DICOM needs pydicom: "
                             f"{INSTALL_HINT}") from None
    return pydicom


def read_dicom(source: str | os.PathLike, frame: int | None = None,
               max_pixels: int = MAX_PIXELS, name: str | None = None) -> np.ndarray:
    """One frame of a DICOM file as ``read_image`` returns images (RGB or grey, 8/16-bit).

    ``frame`` (0-based) picks one frame of a multi-frame file; None takes a single-frame file
    and refuses a multi-frame one.
    """
    path = Path(source)
    label = name or str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"{label}: no such file") from None
    except OSError as exc:
        raise ImageReadError(f"{label}: cannot be read ({exc.strerror or exc})") from None
    return decode_dicom(data, label, max_pixels, frame)


def decode_dicom(data: bytes | np.ndarray, label: str, max_pixels: int = MAX_PIXELS,
                 frame: int | None = None) -> np.ndarray:
    """The pixels of a whole DICOM file's bytes, validated as ``read_image`` validates arrays."""
    from .imageio import _check_budget, _validate_array  # imageio imports this module

    pydicom = require_pydicom(label)
    buffer = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    try:
        dataset = _parse(pydicom, buffer, label)
        image = _pixels(dataset, label, max_pixels, frame, _check_budget)
    except OphregError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file can fail anywhere in pydicom
        raise ImageReadError(f"{label}: damaged DICOM ({type(exc).__name__}: {exc})") from None
    return _validate_array(image, label, max_pixels)


def read_tags(path: Path, label: str | None = None) -> "Dataset":
    """The data set of a DICOM file without its pixels (fast: the pixel data is not read)."""
    label = label or str(path)
    pydicom = require_pydicom(label)
    from pydicom.errors import InvalidDicomError

    try:
        with _pydicom_quiet():
            return pydicom.dcmread(path, stop_before_pixels=True,
                                   force=path.suffix.lower() in SUFFIXES)
    except InvalidDicomError:
        raise ImageReadError(f"{label}: not a DICOM file") from None
    except OSError as exc:
        raise ImageReadError(f"{label}: cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(f"{label}: damaged DICOM ({type(exc).__name__}: {exc})") from None


def _parse(pydicom, buffer: bytes, label: str) -> "Dataset":
    from pydicom.errors import InvalidDicomError

    signed = buffer[_MAGIC_OFFSET:_MAGIC_OFFSET + 4] == b"DICM"
    with _pydicom_quiet() as caught:
        try:
            dataset = pydicom.dcmread(io.BytesIO(buffer), force=not signed)
        except InvalidDicomError:
            dataset = None
        except (EOFError, OSError, ValueError) as exc:
            raise ImageReadError(f"{label}: truncated or damaged DICOM ({exc})") from None
    # pydicom gives up on a file cut inside a sequence or an encapsulated pixel data element
    # with a warning and an empty data set, not an error.
    cut = next((str(w.message) for w in caught if "end of file" in str(w.message).lower()),
               None)
    if signed and (dataset is None or not len(dataset) or cut):
        if dataset is None or not any(tag in dataset for tag in _PIXEL_TAGS):
            raise ImageReadError(f"{label}: truncated DICOM (the data set ends early"
                                 + (f": {cut.split(' in file ')[0]})" if cut else ")"))
    if dataset is None:
        raise ImageReadError(f"{label}: not a DICOM file")
    if not any(tag in dataset for tag in _PIXEL_TAGS):
        kind = _name_of(dataset.get("SOPClassUID"))
        if not len(dataset) or (not signed and "SOPClassUID" not in dataset):
            raise ImageReadError(f"{label}: not a DICOM file")
        raise ImageReadError(f"{label}: a DICOM {kind or 'file'} without pixel data "
                             "(tag 7FE0,0010): no image to register")
    return dataset


def _name_of(uid) -> str:
    if not uid:
        return ""
    name = getattr(uid, "name", "") or str(uid)
    return name


def transfer_syntax(dataset: "Dataset"):
    """The data set's transfer syntax UID; for a file without meta information, what pydicom
    read it as."""
    from pydicom import uid

    syntax = getattr(dataset, "file_meta", None) and dataset.file_meta.get("TransferSyntaxUID")
    if syntax:
        return uid.UID(str(syntax))
    implicit, little = dataset.original_encoding
    if implicit:
        return uid.ImplicitVRLittleEndian
    return uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian


def _pixels(dataset: "Dataset", label: str, max_pixels: int, frame: int | None,
            check_budget) -> np.ndarray:
    from pydicom.pixels import get_decoder

    if "PixelData" not in dataset:
        raise ImageReadError(f"{label}: floating-point pixel data is not supported "
                             "(8- or 16-bit integers)")
    syntax = transfer_syntax(dataset)
    if not syntax.is_transfer_syntax:
        raise ImageReadError(f"{label}: unknown transfer syntax {syntax}: cannot decode its "
                             "pixel data")
    described = f"{syntax.name} ({syntax})"
    missing = [keyword for keyword in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel",
                                       "PhotometricInterpretation")
               if dataset.get(keyword) in (None, "")]
    if missing:
        raise ImageReadError(f"{label}: DICOM image without {', '.join(missing)}")
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    check_budget(label, columns, rows, max_pixels)
    frames = int(dataset.get("NumberOfFrames") or 1)
    if frame is None:
        if frames > 1:
            raise ImageReadError(
                f"{label}: {frames} frames (multi-frame DICOM); ophreg registers single images: "
                "pick one in Python with ophreg_rt.dicom.read_dicom(path, frame=N) or export "
                "the frame as its own file")
        frame = 0
    if not 0 <= frame < frames:
        raise ImageReadError(f"{label}: frame {frame} does not exist (it has {frames}, "
                             "numbered from 0)")
    photometric = str(dataset.PhotometricInterpretation).strip().upper()
    if photometric not in _PHOTOMETRICS:
        raise ImageReadError(f"{label}: photometric interpretation {photometric} is not "
                             f"supported (MONOCHROME1/2, RGB, YBR_FULL, YBR_FULL_422)")
    allocated = int(dataset.BitsAllocated)
    stored = int(dataset.get("BitsStored") or allocated)
    if allocated not in (8, 16) or not 1 <= stored <= allocated:
        raise ImageReadError(f"{label}: {stored} bits stored in {allocated} is not supported "
                             "(8- or 16-bit pixels)")
    signed = bool(int(dataset.get("PixelRepresentation") or 0))
    samples = int(dataset.SamplesPerPixel)
    if samples not in (1, 3):
        raise ImageReadError(f"{label}: {samples} samples per pixel is not supported (1 or 3)")

    if not syntax.is_encapsulated:
        # 4:2:2 native YBR stores two samples a pixel; pydicom's own message for a short
        # buffer speaks of group 0028 and transfer syntaxes, this one of what happened.
        per_pixel = 2 if photometric == "YBR_FULL_422" else samples
        expected = rows * columns * per_pixel * (allocated // 8) * frames
        held = len(dataset.PixelData)
        if held < expected:
            raise ImageReadError(f"{label}: truncated (the pixel data holds {held} of the "
                                 f"{expected} bytes its tags describe)")
    image = None
    if str(syntax) in _JPEG_SYNTAXES:
        image = _opencv_jpeg(dataset, label, frame, frames, rows, columns, described)
    if image is None:
        decoder = get_decoder(syntax)
        if not decoder.is_available:
            needs = "; ".join(decoder.missing_dependencies) or "a decoder plugin"
            raise ImageReadError(f"{label}: {described}, {stored}-bit: no decoder here "
                                 f"(OpenCV cannot, and pydicom needs: {needs})")
        from pydicom.pixels import pixel_array

        with _pydicom_quiet():
            image = pixel_array(dataset, index=frame if frames > 1 else None, as_rgb=True)
        if stored < allocated and not signed:
            # Bits above BitsStored may hold overlays or garbage; they are not pixel values.
            image = image & np.array((1 << stored) - 1, dtype=image.dtype)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.shape[:2] != (rows, columns):
        raise ImageReadError(f"{label}: the pixel data is {image.shape[1]}x{image.shape[0]} px, "
                             f"the tags say {columns}x{rows}")
    if signed:
        # Shifted by half the range: the order of values, all that registration uses, is kept.
        image = image.astype(np.int32) + (1 << (stored - 1))
    image = image.astype(np.uint8 if allocated == 8 else np.uint16, copy=False)
    if photometric == "MONOCHROME1":  # white is zero: turned so that vessels look as in MONOCHROME2
        image = np.array((1 << stored) - 1, dtype=image.dtype) - image
    return image


def _opencv_jpeg(dataset: "Dataset", label: str, frame: int, frames: int, rows: int,
                 columns: int, described: str) -> np.ndarray | None:
    """The frame decoded by OpenCV; None when OpenCV cannot (more than 8 bits a sample)."""
    from pydicom.encaps import generate_frames

    from .image_headers import HeaderError, read_header

    try:
        with _pydicom_quiet():
            stream = _nth(generate_frames(dataset.PixelData, number_of_frames=frames), frame)
    except (ValueError, StopIteration) as exc:
        raise ImageReadError(f"{label}: {described}: damaged encapsulated pixel data "
                             f"({str(exc) or 'fewer frames than NumberOfFrames'})") from None
    try:
        # A JPEG's structure is checked whole before libjpeg sees it: libjpeg decodes a cut
        # stream into a grey-filled picture with only a warning.
        header = read_header(stream)
    except HeaderError as exc:
        raise ImageReadError(f"{label}: frame {frame}: JPEG data {exc}") from None
    if (header.width, header.height) != (columns, rows):
        raise ImageReadError(f"{label}: frame {frame}: the JPEG is {header.width}x"
                             f"{header.height} px, the tags say {columns}x{rows}")
    from .imageio import _imdecode  # libjpeg's own complaints become the engine's warnings

    decoded = _imdecode(stream, f"{label}: frame {frame}")
    if decoded is None:
        return None
    # libjpeg has already turned YCbCr into RGB (by the JFIF/Adobe markers and component ids,
    # which is what the standard asks of a YBR_FULL(_422) JPEG); OpenCV hands it out as BGR.
    if decoded.ndim == 3:
        decoded = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    return decoded


def _nth(iterator, index: int) -> bytes:
    for position, item in enumerate(iterator):
        if position == index:
            return item
    raise StopIteration


# --- writing --------------------------------------------------------------------------------

#: DICOM's "Source image for image processing operation" (CID 7202): both inputs of a warp are.
_PURPOSE = ("121322", "DCM", "Source image for image processing operation")
#: What a derived image must not carry over from its source: pixel-level descriptions that the
#: warp changed (sizes, value ranges, LUTs, icons, frames, overlays, per-frame geometry).
_NOT_CARRIED = (
    "PixelData", "NumberOfFrames", "FrameIncrementPointer", "IconImageSequence",
    "SmallestImagePixelValue", "LargestImagePixelValue", "PixelPaddingValue",
    "WindowCenter", "WindowWidth", "VOILUTSequence", "PixelAspectRatio", "PixelSpacing",
    "ImagerPixelSpacing", "PlanarConfiguration", "PerFrameFunctionalGroupsSequence",
    "SharedFunctionalGroupsSequence", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
    "ReferencedImageSequence", "SourceImageSequence", "DerivationCodeSequence",
    "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
    "ICCProfile", "FrameOfReferenceUID", "SynchronizationFrameOfReferenceUID",
)
#: Patient and study modules, and the spatial frame: taken from the fixed image, whose study
#: the derived instance joins and whose pixel grid it has.
_FROM_FIXED = (
    "SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
    "PatientSex", "PatientAge", "OtherPatientIDsSequence", "StudyInstanceUID", "StudyDate",
    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
    "FrameOfReferenceUID", "PositionReferenceIndicator", "PixelSpacing",
    "ImageLaterality", "Laterality",
)
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM file (by its signature or suffix), without pydicom."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_MAGIC_OFFSET + 4)
    except OSError:
        return False
    return is_dicom(path, head)


#: ``ophreg register --dicom``'s file in --out-dir: no patient identifier in its name.
DICOM_OUTPUT = "warped.dcm"


def dicom_output_path(out_dir: Path | None, fixed: Path, moving: Path) -> Path:
    """Where ``register --dicom`` writes; refuses, before any work, what cannot be written."""
    from .errors import InvalidConfigError

    if out_dir is None:
        raise InvalidConfigError("--dicom: needs --out-dir (warped.dcm is written there)")
    if not is_dicom_file(fixed):
        raise InvalidConfigError(f"--dicom: {fixed} is not DICOM; the warped image joins the "
                                 "fixed image's study, so FIXED must be a DICOM file")
    _same_patient(read_tags(fixed), fixed, moving)
    return out_dir / DICOM_OUTPUT


def _same_patient(fixed_tags, fixed: Path, moving: Path):
    """The moving image's tags (None when it is not DICOM); refuses another patient's image,
    which filed into this patient's study would be a patient-safety error in a PACS."""
    if not is_dicom_file(moving):
        return None
    moving_tags = read_tags(moving)
    if str(fixed_tags.get("PatientID", "")) != str(moving_tags.get("PatientID", "")):
        raise PatientMismatchError(f"{moving}: belongs to another patient than {fixed} (PatientID "
                                   "differs): a warped image is only filed into its own "
                                   "patient's study")
    return moving_tags


def warped_instance(fixed: Path, moving: Path, warped: np.ndarray, result) -> bytes:
    """``derived_instance`` for a :class:`RegistrationResult`."""
    from . import __version__

    return derived_instance(Path(fixed), Path(moving), warped, result.to_json(),
                            f"ophreg-rt {__version__}")


def derived_instance(fixed: Path, moving: Path, warped: np.ndarray, result: dict,
                     software: str) -> bytes:
    """The warped moving image as a DICOM Part 10 file in the fixed image's study.

    ``fixed`` must be DICOM (its patient and study are the instance's); ``moving`` may be any
    image: a DICOM moving image lends its acquisition attributes (modality, device, contrast
    agent, SOP class), anything else makes a Secondary Capture. ``result`` is the registration's
    JSON (``RegistrationResult.to_json()`` or a batch line): its transform goes into the
    derivation description. Refuses two different patients (a patient-safety error in a PACS).
    """
    from pydicom import Dataset, Sequence, uid
    from pydicom.dataset import FileMetaDataset

    fixed_tags = read_tags(fixed)
    if "StudyInstanceUID" not in fixed_tags or "SOPInstanceUID" not in fixed_tags:
        raise ImageReadError(f"{fixed}: DICOM without a study or SOP instance UID: the warped "
                             "image cannot join its study")
    source = _same_patient(fixed_tags, fixed, moving)
    if source is not None:
        # Deep: a shallow copy shares the elements, and the new UIDs would overwrite the
        # source's, which the references below need.
        dataset = copy.deepcopy(source)
    else:
        source = None
        dataset = Dataset()
        dataset.SOPClassUID = SECONDARY_CAPTURE
        dataset.Modality = "OT"
        dataset.ConversionType = "WSD"  # made on a workstation, not digitised
    for keyword in _NOT_CARRIED:
        if keyword in dataset:
            delattr(dataset, keyword)
    for keyword in _FROM_FIXED:
        if keyword in fixed_tags:
            setattr(dataset, keyword, fixed_tags[keyword].value)
    # Private tags of another vendor's software describe the source, not this image.
    dataset.remove_private_tags()
    now = datetime.datetime.now()
    dataset.SeriesInstanceUID = uid.generate_uid()
    dataset.SOPInstanceUID = uid.generate_uid()
    dataset.SeriesNumber = _series_number(fixed_tags)
    dataset.InstanceNumber = 1
    dataset.SeriesDescription = "Registered onto the fixed image (ophreg-rt)"
    dataset.SeriesDate = dataset.ContentDate = now.strftime("%Y%m%d")
    dataset.SeriesTime = dataset.ContentTime = now.strftime("%H%M%S")
    dataset.ImageType = ["DERIVED", "SECONDARY"]
    dataset.DerivationDescription = _derivation(result)[:1024]  # ST holds 1024 characters
    dataset.ImageComments = _short_transform(result)[:10240]
    dataset.SoftwareVersions = software
    dataset.SourceImageSequence = Sequence([
        _reference(tags) for tags in (source, fixed_tags) if tags is not None])
    _set_pixels(dataset, warped)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    dataset.file_meta = meta
    out = io.BytesIO()
    try:
        dataset.save_as(out, enforce_file_format=True)
    except Exception as exc:  # noqa: BLE001 - a source attribute pydicom cannot write
        raise OutputWriteError(f"the DICOM instance for {moving} cannot be encoded "
                               f"({type(exc).__name__}: {exc})") from None
    return out.getvalue()


def _series_number(fixed_tags) -> int:
    # Past the fixed image's series so that a viewer lists the derived series after it.
    try:
        return int(fixed_tags.get("SeriesNumber") or 0) + 1000
    except (TypeError, ValueError):
        return 1000


def _reference(tags):
    from pydicom import Dataset, Sequence

    item = Dataset()
    item.ReferencedSOPClassUID = tags.SOPClassUID
    item.ReferencedSOPInstanceUID = tags.SOPInstanceUID
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = _PURPOSE
    item.PurposeOfReferenceCodeSequence = Sequence([code])
    return item


def _transform_parameters(result: dict) -> tuple[str, list]:
    model, parameters = fitted_from_json(result)
    return model.value, parameters.tolist()


def _rounded(values) -> list:
    return json.loads(json.dumps(values), parse_float=lambda text: round(float(text), 6))


def _derivation(result: dict) -> str:
    model, parameters = _transform_parameters(result)
    what = ("2x6 quadratic coefficients" if model == TransformModel.QUADRATIC.value
            else "3x3 matrix")
    return (f"Moving image resampled into the fixed image's pixel grid by the fitted {model} "
            "transform "
            f"(moving pixel -> fixed pixel, {what}): {json.dumps(_rounded(parameters))}; "
            f"{result.get('num_inliers', '?')} inlier correspondences; first source is the "
            "moving image, second the fixed one")


def _short_transform(result: dict) -> str:
    model, parameters = _transform_parameters(result)
    return f"ophreg-rt {model} moving->fixed {json.dumps(_rounded(parameters))}"


def _set_pixels(dataset, image: np.ndarray) -> None:
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]  # DICOM photographs have no alpha
    bits = 8 if image.dtype == np.uint8 else 16
    dataset.Rows, dataset.Columns = image.shape[:2]
    dataset.SamplesPerPixel = 3 if image.ndim == 3 else 1
    dataset.PhotometricInterpretation = "RGB" if image.ndim == 3 else "MONOCHROME2"
    if image.ndim == 3:
        dataset.PlanarConfiguration = 0
    dataset.BitsAllocated = dataset.BitsStored = bits
    dataset.HighBit = bits - 1
    dataset.PixelRepresentation = 0
    data = np.ascontiguousarray(image).astype(f"<u{bits // 8}", copy=False).tobytes()
    if len(data) % 2:
        data += b"\x00"  # DICOM values have even length
    dataset.PixelData = data
    dataset["PixelData"].VR = "OB" if bits == 8 else "OW"
    if "LossyImageCompression" not in dataset:
        dataset.LossyImageCompression = "00"
