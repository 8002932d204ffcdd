"""Small uncompressed DICOM files written with pydicom, for the DICOM benchmarks and tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"   # Computed Radiography Image Storage


def write_dicom(path: Path, pixels: np.ndarray, *, modality: str = "CT",
                photometric: str = "MONOCHROME2", study: str | None = None,
                series: str | None = None, sop: str | None = None, **attrs) -> Path:
    """Write an uncompressed (Explicit VR Little Endian) DICOM file with the given pixels.

    ``attrs`` are further header attributes by keyword (e.g. ``PixelSpacing=[0.7, 0.7]``); an
    empty ``pixels`` array writes a file without pixel data.
    """
    pixels = np.asarray(pixels)
    sop = sop or generate_uid()
    sop_class = {"CT": CTImageStorage, "MR": MRImageStorage}.get(modality, CR_STORAGE)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, sop, modality
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientID = "anon"
    if pixels.size:
        ds.set_pixel_data(pixels, photometric, 16, generate_instance_uid=False)
        if pixels.ndim == 3:
            ds.NumberOfFrames = pixels.shape[0]
    for key, value in attrs.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
