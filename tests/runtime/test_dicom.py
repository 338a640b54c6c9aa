"""DICOM in (every encoding a camera or PACS sends, bad files refused in one line naming the file)
and out (``register --dicom``: a derived instance in the fixed image's study)."""

from __future__ import annotations

import os
import sys

import cv2
import numpy as np
import pytest
from conftest import CC0_RETINA, REQUIRE_SHARED

from benchmarks.dicom_cohort import lossless_jpeg, write_dicom
from ophreg_rt.cli import EXIT_OK, EXIT_USAGE, main
from ophreg_rt.dicom import INSTALL_HINT, dicom_output_path, read_dicom
from ophreg_rt.errors import ImageReadError, ImageTooLargeError, PatientMismatchError
from ophreg_rt.imageio import read_image

try:
    import pydicom
except ImportError:  # the `dicom` extra; CI installs it (README's set-up line)
    if REQUIRE_SHARED:
        raise
    pytest.skip("pydicom (the dicom extra) is not installed", allow_module_level=True)

SIDE = 256  # even: YBR_FULL_422 shares chroma between two columns


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    image = read_image(CC0_RETINA)
    return cv2.resize(image, (SIDE, SIDE), interpolation=cv2.INTER_AREA)


def grey(image: np.ndarray) -> np.ndarray:
    return image[:, :, 1].copy()


# (encoding, colour, 16-bit, largest mean |difference| allowed: 0 = exact)
CASES = [
    ("native", False, False, 0), ("native", True, False, 0), ("native", False, True, 0),
    ("ybr_full", True, False, 0.6), ("ybr_full_422", True, False, 1.5),
    ("rle", True, False, 0), ("rle", False, False, 0), ("rle", False, True, 0),
    ("jpeg_baseline", True, False, 2.5), ("jpeg_baseline", False, False, 2.0),
    ("jpeg_lossless", False, False, 0),
]


@pytest.mark.parametrize("encoding, colour, sixteen, tolerance", CASES,
                         ids=[f"{c[0]}-{'rgb' if c[1] else 'grey'}-{16 if c[2] else 8}bit"
                              for c in CASES])
def test_every_encoding_reads_back_as_its_pixels_in_rgb_order(tmp_path, retina, encoding, colour,
                                                              sixteen, tolerance):
    image = retina if colour else grey(retina)
    if sixteen:
        image = image.astype(np.uint16) * 257
    path = write_dicom(tmp_path / "image.dcm", image, encoding=encoding)
    read = read_image(path)
    expected = (image >> 4) if sixteen else image  # 16-bit files hold 12 bits
    assert read.shape == expected.shape and read.dtype == expected.dtype
    difference = np.abs(read.astype(np.float64) - expected.astype(np.float64)).mean()
    assert difference <= tolerance, difference
    if colour:  # the fundus is red: a channel swap or a missed YCbCr conversion shows here
        means = read.reshape(-1, 3).mean(axis=0)
        assert means[0] > means[1] > means[2]


def test_a_file_named_otherwise_is_found_by_its_signature(tmp_path, retina):
    path = write_dicom(tmp_path / "IM0001", retina)  # PACS exports rarely have suffixes
    assert np.array_equal(read_image(path), retina)


def test_monochrome1_is_turned_so_that_vessels_look_as_in_monochrome2(tmp_path, retina):
    image = grey(retina)
    path = write_dicom(tmp_path / "m1.dcm", 255 - image,
                       tags={"PhotometricInterpretation": "MONOCHROME1"})
    assert np.array_equal(read_image(path), image)


def test_signed_pixels_keep_their_order(tmp_path, retina):
    image = grey(retina).astype(np.int16) * 8 - 1000
    path = write_dicom(tmp_path / "signed.dcm", np.zeros(image.shape, np.uint16))
    dataset = pydicom.dcmread(path)
    dataset.PixelData = image.astype("<i2").tobytes()
    dataset.PixelRepresentation, dataset.BitsStored, dataset.HighBit = 1, 16, 15
    dataset.save_as(path, enforce_file_format=True)
    read = read_image(path)
    assert read.dtype == np.uint16
    assert np.array_equal(read.astype(np.int64) - 32768, image)


#: Files written by other software (dcmtk, GDCM), shipped inside pydicom's wheel: rows of
#: known colours, top to bottom.
COLOUR_BANDS = {5: (255, 0, 0), 15: (255, 128, 128), 25: (0, 255, 0), 35: (128, 255, 128),
                45: (0, 0, 255), 55: (128, 128, 255), 65: (0, 0, 0), 75: (64, 64, 64),
                85: (192, 192, 192), 95: (255, 255, 255)}


@pytest.mark.parametrize("name, tolerance", [
    ("SC_rgb_jpeg_dcmtk.dcm", 6),  # JPEG baseline, YBR_FULL
    ("SC_rgb_dcmtk_+eb+cy+n1.dcm", 6),  # JPEG baseline, YBR_FULL, other options
    ("SC_rgb_jpeg_gdcm.dcm", 0),  # JPEG lossless, RGB
    ("SC_ybr_full_422_uncompressed.dcm", 6),  # YCbCr rounding as in the JPEG files
    ("SC_rgb_rle.dcm", 0),
])
def test_files_of_other_writers_give_their_known_colours(name, tolerance):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not shipped by this pydicom")
    image = read_image(path)
    for row, colour in COLOUR_BANDS.items():
        assert np.abs(image[row, 50].astype(int) - colour).max() <= tolerance, (row, image[row, 50])


def test_lossless_jpeg_over_eight_bits_is_decoded_or_refused_naming_file_and_syntax(tmp_path,
                                                                                    retina):
    image = grey(retina).astype(np.uint16) * 16  # 12-bit
    path = tmp_path / "ll12.dcm"
    write_dicom(path, np.zeros_like(image), encoding="native")
    dataset = pydicom.dcmread(path)
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    dataset.PixelData = encapsulate([lossless_jpeg(image, 12)])
    dataset["PixelData"].VR = "OB"
    dataset.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    dataset.save_as(path, enforce_file_format=True)
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLosslessSV1).is_available:  # pylibjpeg or GDCM installed
        assert np.array_equal(read_image(path), image)
        return
    with pytest.raises(ImageReadError) as refused:
        read_image(path)
    message = str(refused.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert "1.2.840.10008.1.2.4.70" in message and "12-bit" in message


def test_multi_frame_files_are_refused_unless_a_frame_is_chosen(tmp_path, retina):
    path = write_dicom(tmp_path / "stereo.dcm", retina, frames=2)
    with pytest.raises(ImageReadError, match=r"stereo\.dcm: 2 frames \(multi-frame"):
        read_image(path)
    assert np.array_equal(read_dicom(path, frame=1), retina)
    with pytest.raises(ImageReadError, match="frame 2 does not exist"):
        read_dicom(path, frame=2)


def test_the_pixel_budget_is_checked_from_the_tags(tmp_path, retina):
    path = write_dicom(tmp_path / "big.dcm", retina)
    with pytest.raises(ImageTooLargeError, match="big.dcm: 256x256 px"):
        read_image(path, max_pixels=SIDE * SIDE - 1)


def _unknown_syntax(path):
    dataset = pydicom.dcmread(path)
    dataset.file_meta.TransferSyntaxUID = "1.2.826.0.1.3680043.9.9999.1"
    dataset.save_as(path, enforce_file_format=True)


def _no_pixels(path):
    dataset = pydicom.dcmread(path)
    del dataset.PixelData
    dataset.save_as(path, enforce_file_format=True)


def _cut(fraction):
    def cut(path):
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * fraction)])
    return cut


def _cut_jpeg_inside_whole_file(path):
    from pydicom.encaps import encapsulate, generate_frames

    dataset = pydicom.dcmread(path)
    frame = next(generate_frames(dataset.PixelData, number_of_frames=1))
    dataset.PixelData = encapsulate([frame[:len(frame) * 2 // 3 // 2 * 2]])
    dataset.save_as(path, enforce_file_format=True)


def _palette(path):
    dataset = pydicom.dcmread(path)
    dataset.PhotometricInterpretation = "PALETTE COLOR"
    dataset.save_as(path, enforce_file_format=True)


def _not_dicom(path):
    path.write_text("patient list\n")


BAD_FILES = {
    "truncated pixel data": ("native", _cut(0.6), "truncated"),
    "truncated in the header": ("native", _cut(0.004), "truncated"),
    "truncated file in a JPEG frame": ("jpeg_baseline", _cut(0.8), "truncated"),
    "JPEG frame cut in a whole file": ("jpeg_baseline", _cut_jpeg_inside_whole_file,
                                       "frame 0: JPEG data truncated"),
    "no pixel data": ("native", _no_pixels, "without pixel data"),
    "unknown transfer syntax": ("native", _unknown_syntax,
                                "unknown transfer syntax 1.2.826.0.1.3680043.9.9999.1"),
    "unsupported photometric": ("native", _palette, "PALETTE COLOR is not supported"),
    "not DICOM at all": ("native", _not_dicom, "not a DICOM file"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_are_one_line_naming_the_file(tmp_path, retina, capsys, case):
    encoding, damage, words = BAD_FILES[case]
    path = write_dicom(tmp_path / "bad.dcm", grey(retina), encoding=encoding)
    good = write_dicom(tmp_path / "good.dcm", grey(retina))
    damage(path)
    with pytest.raises(ImageReadError) as refused:
        read_image(path)
    assert str(refused.value).startswith(f"{path}: ") and words in str(refused.value)
    capsys.readouterr()
    assert main(["register", str(path), str(good)]) == EXIT_USAGE
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(path) in error and "Traceback" not in error


def test_without_pydicom_a_dicom_file_says_how_to_install_it(tmp_path, retina, monkeypatch):
    path = write_dicom(tmp_path / "fundus.dcm", retina)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    with pytest.raises(ImageReadError) as refused:
        read_image(path)
    assert str(refused.value).startswith(str(path)) and INSTALL_HINT in str(refused.value)


@pytest.fixture(scope="module")
def dicom_pair(tmp_path_factory, retina):
    """Fixed and moving photographs of one patient (the moving one turned by 8 degrees)."""
    folder = tmp_path_factory.mktemp("pair")
    centre = (SIDE / 2, SIDE / 2)
    turn = cv2.getRotationMatrix2D(centre, 8, 1.0)
    moving = cv2.warpAffine(retina, turn, (SIDE, SIDE))
    fixed_path = write_dicom(folder / "fixed.dcm", retina, encoding="jpeg_baseline",
                             patient_id="MRN5501", patient_name="DOE^JANE",
                             tags={"ImageLaterality": "R", "SeriesNumber": 3})
    moving_path = write_dicom(folder / "moving.dcm", moving, encoding="ybr_full_422",
                              patient_id="MRN5501", patient_name="DOE^JANE",
                              tags={"ImageLaterality": "R"})
    return fixed_path, moving_path


def test_register_writes_the_warp_as_a_new_series_of_the_fixed_study(dicom_pair, tmp_path):
    fixed_path, moving_path = dicom_pair
    out = tmp_path / "out"
    assert main(["register", str(fixed_path), str(moving_path), "--out-dir", str(out),
                 "--dicom", "--size", "256", "--json", str(out / "result.json")]) == EXIT_OK
    derived = pydicom.dcmread(out / "warped.dcm")
    fixed, moving = pydicom.dcmread(fixed_path), pydicom.dcmread(moving_path)
    assert derived.StudyInstanceUID == fixed.StudyInstanceUID
    assert derived.PatientID == fixed.PatientID and derived.PatientName == fixed.PatientName
    new_uids = {derived.SeriesInstanceUID, derived.SOPInstanceUID}
    assert not new_uids & {fixed.SeriesInstanceUID, fixed.SOPInstanceUID,
                           moving.SeriesInstanceUID, moving.SOPInstanceUID}
    assert derived.file_meta.MediaStorageSOPInstanceUID == derived.SOPInstanceUID
    assert [item.ReferencedSOPInstanceUID for item in derived.SourceImageSequence] == \
        [moving.SOPInstanceUID, fixed.SOPInstanceUID]
    assert list(derived.ImageType[:2]) == ["DERIVED", "SECONDARY"]
    assert derived.SeriesNumber == 1003 and derived.LossyImageCompression == "00"
    assert "affine" in derived.DerivationDescription and "moving pixel -> fixed pixel" in \
        derived.DerivationDescription
    assert (derived.Rows, derived.Columns) == (fixed.Rows, fixed.Columns)
    assert np.array_equal(read_image(out / "warped.dcm"), read_image(out / "warped.png"))


def test_dicom_output_is_refused_before_any_work_when_it_cannot_be_right(dicom_pair, tmp_path,
                                                                         retina, capsys):
    fixed_path, moving_path = dicom_pair
    png = tmp_path / "fixed.png"
    cv2.imwrite(str(png), retina)
    other = write_dicom(tmp_path / "other.dcm", retina, patient_id="MRN9999",
                        patient_name="ROE^RICHARD")
    out = tmp_path / "out"
    assert main(["register", str(png), str(moving_path), "--out-dir", str(out),
                 "--dicom"]) == EXIT_USAGE
    assert "FIXED must be a DICOM file" in capsys.readouterr().err
    assert not out.exists()
    assert main(["register", str(fixed_path), str(moving_path), "--dicom"]) == EXIT_USAGE
    assert "--dicom: needs --out-dir" in capsys.readouterr().err
    # A warped image is never filed into another patient's study.
    assert main(["register", str(fixed_path), str(other), "--out-dir", str(out), "--dicom",
                 "--size", "256"]) == EXIT_USAGE
    assert "another patient" in capsys.readouterr().err
    assert not (out / "warped.dcm").exists() and not (out / "warped.png").exists()
    with pytest.raises(PatientMismatchError, match="belongs to another patient"):
        dicom_output_path(out, fixed_path, other)


def test_dicom_module_is_imported_without_pydicom_until_a_dicom_file_is_met():
    import subprocess

    code = ("import sys; sys.modules['pydicom'] = None; import ophreg_rt.imageio, "
            "ophreg_rt.cohort.cli; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.stdout.strip() == "ok", done.stderr
