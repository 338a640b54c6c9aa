"""A DICOM cohort with known transforms, as a clinic's export would hold it.

``write_dicom`` writes one image as an Ophthalmic Photography instance (8- or 16-bit) in one of
the encodings cameras and PACS produce: native grey/RGB/YBR_FULL/YBR_FULL_422, RLE, JPEG
baseline (YCbCr 4:2:2, as most fundus cameras send it) and JPEG lossless. ``write_dicom_cohort``
turns the synthetic cohort of ``synthetic_cohort.write_cohort`` (real eyes, seeded affine
visits, an angiogram-like type) into such files, with the tags that ``ophreg pairs DICOM_DIR``
reads spread over the places real files put them (ImageLaterality or only the series'
Laterality; AcquisitionDateTime, ContentDate or only StudyDate; the modality in the contrast
agent or the series description; the field centre in the series description), plus files that
are no single image (a report, a two-frame series) and a diagnoses CSV.

    python -m benchmarks.dicom_cohort OUT_DIR [--width 512]   # demo cohort from ../shared/data/dev
"""

from __future__ import annotations

import argparse
import csv
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from benchmarks.synthetic_cohort import write_cohort
from ophreg_rt.imageio import read_image

OP_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
OP_16BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.2"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENCODINGS = ("native", "ybr_full", "ybr_full_422", "rle", "jpeg_baseline", "jpeg_lossless")
#: Made-up names: the privacy tests look for them in every output.
PATIENT_NAMES = ("DOE^JANE", "ROE^RICHARD", "POE^EDGAR", "MOE^MARY")


def write_dicom(path: Path, image: np.ndarray, *, encoding: str = "native",
                patient_id: str = "12345", patient_name: str = "DOE^JANE",
                study_uid: str | None = None, tags: dict | None = None,
                frames: int = 1) -> Path:
    """Write ``image`` (grey or RGB, uint8 or uint16) as an Ophthalmic Photography file.

    ``tags``: extra keyword -> value (laterality, dates, descriptions...); None deletes one.
    ``frames`` > 1 repeats the image (a multi-frame file). 16-bit images are written native
    with 12 bits stored (values are shifted down by 4).
    """
    from pydicom import Dataset, uid
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate

    sixteen = image.dtype == np.uint16
    colour = image.ndim == 3
    dataset = Dataset()
    dataset.SOPClassUID = OP_16BIT if sixteen else OP_8BIT
    dataset.SOPInstanceUID = uid.generate_uid()
    dataset.StudyInstanceUID = study_uid or uid.generate_uid()
    dataset.SeriesInstanceUID = uid.generate_uid()
    dataset.PatientName, dataset.PatientID = patient_name, patient_id
    dataset.PatientBirthDate, dataset.PatientSex = "19600101", "F"
    dataset.Modality = "OP"
    dataset.SeriesNumber, dataset.InstanceNumber = 1, 1
    dataset.StudyDate = "20240301"
    dataset.ImageType = ["ORIGINAL", "PRIMARY"]
    dataset.Manufacturer = "ophreg-rt test camera"
    dataset.PixelSpacing = [0.01, 0.01]
    rows, columns = image.shape[:2]
    dataset.Rows, dataset.Columns = rows, columns
    dataset.SamplesPerPixel = 3 if colour else 1
    dataset.BitsAllocated = 16 if sixteen else 8
    dataset.BitsStored = 12 if sixteen else 8
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 0
    if frames > 1:
        dataset.NumberOfFrames = frames
    syntax = uid.ExplicitVRLittleEndian
    pixels = (image >> 4).astype("<u2") if sixteen else image
    if encoding == "native":
        dataset.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
        data = np.ascontiguousarray(pixels).tobytes() * frames
    elif encoding in ("ybr_full", "ybr_full_422"):
        _need_colour(image, encoding)
        dataset.PhotometricInterpretation = encoding.upper()
        ybr = _rgb_to_ybr_full(image)
        if encoding == "ybr_full_422":
            # Two pixels share one Cb and one Cr: Y1 Y2 Cb Cr (PS3.3 C.7.6.3.1.2).
            pairs = ybr.reshape(rows, columns // 2, 2, 3)
            chroma = pairs[:, :, :, 1:].astype(np.uint16).mean(axis=2).round().astype(np.uint8)
            ybr = np.concatenate([pairs[:, :, :, 0], chroma], axis=2)
        data = np.ascontiguousarray(ybr).tobytes() * frames
    elif encoding == "rle":
        dataset.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
        dataset.PlanarConfiguration = 0
        dataset.PixelData = np.ascontiguousarray(pixels).tobytes() * frames
        dataset.file_meta = FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = syntax
        dataset.compress(uid.RLELossless, encoding_plugin="pydicom")
        syntax, data = uid.RLELossless, None
    elif encoding == "jpeg_baseline":
        if sixteen:
            raise ValueError("JPEG baseline holds 8-bit samples")
        dataset.PhotometricInterpretation = "YBR_FULL_422" if colour else "MONOCHROME2"
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if colour else image
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95,
                                                 cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                                 cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422])
        assert ok
        syntax, data = uid.JPEGBaseline8Bit, encapsulate([encoded.tobytes()] * frames)
        dataset.LossyImageCompression = "01"
        dataset.LossyImageCompressionMethod = "ISO_10918_1"
    elif encoding == "jpeg_lossless":
        if colour:
            raise ValueError("this writer's lossless JPEG is single-component")
        dataset.PhotometricInterpretation = "MONOCHROME2"
        stream = lossless_jpeg(pixels, 12 if sixteen else 8)
        syntax, data = uid.JPEGLosslessSV1, encapsulate([stream] * frames)
    else:
        raise ValueError(f"unknown encoding {encoding}")
    if colour and "PlanarConfiguration" not in dataset:
        dataset.PlanarConfiguration = 0
    if data is not None:
        dataset.PixelData = data + (b"\x00" if len(data) % 2 else b"")
    dataset["PixelData"].VR = "OW" if sixteen and not syntax.is_encapsulated else "OB"
    for keyword, value in (tags or {}).items():
        if value is None:
            if keyword in dataset:
                delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    dataset.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


def _need_colour(image: np.ndarray, encoding: str) -> None:
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"{encoding} needs an 8-bit RGB image")


def _rgb_to_ybr_full(image: np.ndarray) -> np.ndarray:
    """RGB -> YCbCr, full range (PS3.3 C.7.6.3.1.2's YBR_FULL equations)."""
    red, green, blue = (image[:, :, i].astype(np.float64) for i in range(3))
    y = 0.299 * red + 0.587 * green + 0.114 * blue
    cb = -0.168736 * red - 0.331264 * green + 0.5 * blue + 128
    cr = 0.5 * red - 0.418688 * green - 0.081312 * blue + 128
    return np.clip(np.stack([y, cb, cr], axis=2).round(), 0, 255).astype(np.uint8)


def lossless_jpeg(image: np.ndarray, precision: int) -> bytes:
    """A single-component lossless JPEG (process 14, predictor 1: the left neighbour).

    No encoder of this format is a dependency here (OpenCV and Pillow write none), and a
    decoder is only tested by data it did not write: one Huffman table gives all 17 difference
    categories a 5-bit code.
    """
    height, width = image.shape
    values = image.astype(np.int64)
    prediction = np.empty_like(values)
    prediction[0, 0] = 1 << (precision - 1)
    prediction[0, 1:] = values[0, :-1]
    prediction[1:, 0] = values[:-1, 0]
    prediction[1:, 1:] = values[1:, :-1]
    differences = (values - prediction + 32768) % 65536 - 32768
    bits: list[str] = []
    for difference in differences.ravel().tolist():
        category = 16 if difference == -32768 else abs(difference).bit_length()
        bits.append(format(category, "05b"))
        if 0 < category < 16:
            extra = difference if difference > 0 else difference - 1 + (1 << category)
            bits.append(format(extra, f"0{category}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    scan = bytearray()
    for byte in int(stream, 2).to_bytes(len(stream) // 8, "big") if stream else b"":
        scan.append(byte)
        if byte == 0xFF:
            scan.append(0)  # a data 0xFF is stuffed so it is never read as a marker
    counts = [0] * 16
    counts[4] = 17
    table = bytes([0x00]) + bytes(counts) + bytes(range(17))
    return (b"\xff\xd8"
            + b"\xff\xc4" + struct.pack(">H", 2 + len(table)) + table
            + b"\xff\xc3" + struct.pack(">HBHHB", 11, precision, height, width, 1)
            + bytes([1, 0x11, 0])
            + b"\xff\xda" + struct.pack(">HB", 8, 1) + bytes([1, 0x00, 1, 0, 0])
            + bytes(scan) + b"\xff\xd9")


def write_report_object(path: Path, patient_id: str) -> Path:
    """A DICOM object with no pixels (a structured report), as exports often hold."""
    from pydicom import Dataset, uid
    from pydicom.dataset import FileMetaDataset

    dataset = Dataset()
    dataset.SOPClassUID, dataset.SOPInstanceUID = BASIC_TEXT_SR, uid.generate_uid()
    dataset.PatientID, dataset.Modality = patient_id, "SR"
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    dataset.save_as(path, enforce_file_format=True)
    return path


@dataclass(frozen=True)
class DicomCohort:
    folder: Path  # the DICOM files (and nothing else of the cohort)
    diagnoses: Path  # patient_id,diagnosis CSV (real PatientIDs)
    manifest: Path  # the PNG cohort's hand-written manifest: what the tags must give back
    #: DICOM path -> the PNG it was made from
    png_of: dict[Path, Path]
    #: DICOM path -> 3x3 map from the eye's baseline to this image
    from_baseline: dict[Path, np.ndarray]

    def truth(self, fixed: Path, moving: Path) -> np.ndarray:
        return self.from_baseline[fixed] @ np.linalg.inv(self.from_baseline[moving])


def write_dicom_cohort(folder: Path, sources: list[Path], width: int = 320,
                       seed: int = 5) -> DicomCohort:
    """The synthetic cohort of ``sources`` as DICOM files under ``folder/dicom``."""
    from pydicom import uid

    synthetic = write_cohort(folder / "png", sources, width=width, seed=seed)
    with open(synthetic.manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    dicom_folder = folder / "dicom"
    png_of, from_baseline, diagnoses = {}, {}, {}
    studies: dict[tuple[str, str], str] = {}
    for number, row in enumerate(rows):
        png = synthetic.manifest.parent / row["path"]
        image = read_image(png)
        patient = int(row["patient_id"][1:])
        real_id = f"MRN{7310 + patient}"
        diagnoses[real_id] = row["diagnosis"]
        fluorescein = row["image_type"] == "FA"
        if fluorescein:
            # Angiograms are grey, and some devices send them at 16 bits.
            image = image if image.ndim == 2 else image[:, :, 1]
            if number % 2:
                image = image.astype(np.uint16) * 257
        encoding = _encoding_for(number, image)
        date = row["date"].replace("-", "")
        field_words = "Macula" if row["field"] == "macula" else "Optic disc"
        tags = {"StudyDate": date}
        # The modality in the contrast agent for angiograms, in the description for the rest
        # (and nowhere but the photometric interpretation for one colour image).
        description = f"{'Colour' if not fluorescein else 'Angiography'} {field_words}"
        if fluorescein:
            tags["ContrastBolusAgent"] = "Fluorescein sodium"
            description = f"Late phase {field_words}"
        elif number % 5 == 4:
            description = field_words
        tags["SeriesDescription"] = description
        laterality = "L" if row["eye"] == "left" else "R"
        if number % 4 == 3:
            tags["Laterality"] = laterality  # series level only: the fallback
        else:
            tags["ImageLaterality"] = laterality
        if number % 3 == 0:
            tags["AcquisitionDateTime"] = date + "101500.000000"
        elif number % 3 == 1:
            tags["ContentDate"] = date
        # one in three: StudyDate only (the visit's study)
        study = studies.setdefault((real_id, date), uid.generate_uid())
        path = dicom_folder / f"IM{number:04d}.dcm"
        write_dicom(path, image, encoding=encoding, patient_id=real_id,
                    patient_name=PATIENT_NAMES[patient % len(PATIENT_NAMES)],
                    study_uid=study, tags=tags)
        png_of[path] = png
        from_baseline[path] = synthetic.from_baseline[png]
    write_report_object(dicom_folder / "SR0001.dcm", "MRN7310")
    multi = read_image(synthetic.manifest.parent / rows[0]["path"])
    write_dicom(dicom_folder / "MF0001.dcm", multi, frames=2, patient_id="MRN7310",
                tags={"ImageLaterality": "R", "SeriesDescription": "Colour Macula stereo"})
    diagnoses_csv = folder / "diagnoses.csv"
    with open(diagnoses_csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "diagnosis"])
        writer.writerows(sorted(diagnoses.items()))
    return DicomCohort(dicom_folder, diagnoses_csv, synthetic.manifest, png_of, from_baseline)


def _encoding_for(number: int, image: np.ndarray) -> str:
    """Encodings spread over the cohort, each where it applies."""
    if image.dtype == np.uint16:
        return "native"  # OpenCV decodes no lossless JPEG over 8 bits (test_dicom refuses one)
    if image.ndim == 2:
        return ("jpeg_lossless", "native", "jpeg_baseline", "rle")[number % 4]
    return ("jpeg_baseline", "native", "ybr_full", "ybr_full_422", "rle",
            "jpeg_baseline")[number % 6]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--data-dir", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data" / "dev")
    args = parser.parse_args()
    sources = [args.data_dir / "single" / "skimage_retina.jpg"] + [
        args.data_dir / "single" / "drive_training" / f"{n}_training.tif" for n in (21, 22)]
    cohort = write_dicom_cohort(args.out_dir, [s for s in sources if s.is_file()],
                                width=args.width)
    print(f"DICOM files: {cohort.folder}\ndiagnoses: {cohort.diagnoses}")


if __name__ == "__main__":
    main()
