"""DICOM at the site: read headers and pixels, assemble series, and load a labelled folder.

Pixel pipeline (`pixels.read_pixels`, `series.assemble_series`): decode (pydicom; JPEG, JPEG-LS
and JPEG 2000 through the pylibjpeg plugins) -> modality LUT / RescaleSlope+Intercept (stored
values become e.g. Hounsfield units) -> VOI window (the ``window`` argument "CENTER,WIDTH" if
given, else the file's first WindowCenter/WindowWidth, both through pydicom's `apply_voi_lut`;
else the image's own min..max) -> [0, 1] float32, inverted for MONOCHROME1 (so bright is always
"dense"). RGB and YBR images are converted to grey (ITU-R BT.601 luma) and take the window or
min..max.

Folder layout (`loader.load`): any tree of DICOM files (any extension or none) plus a
``labels.csv`` (see `common.datasets.labels`) whose key column joins rows to files (`keys`):

* ``SOPInstanceUID`` / ``path`` (relative to the folder): one file per sample; a multi-frame file
  is a volume.
* ``SeriesInstanceUID``: the series' slices, sorted along the slice normal.
* ``StudyInstanceUID``: the study's largest series (most files; ties: smallest UID).

With ``spatial_dims == 3`` a sample is the whole volume; with ``spatial_dims == 2`` it is the
volume's middle slice (middle frame of a multi-frame file). Samples are resized to
``image_size`` per side (3D: stretched to a cube, as MedMNIST 3D does) with MONAI's ``Resize``,
or, with the run setting ``spacing``, resampled to that spacing in mm and padded/cropped about
the centre (`common.datasets.spacing`; a file without its pixel spacing is then a bad file), and
cached by file content (`common.datasets.cache`). Bad files are skipped and listed in
``Dataset.skipped`` unless ``strict``, where the first one raises `header.DicomFileError`.

A bad file is one that cannot give a correct image, named with the element at fault: unreadable
or lying headers (an unknown VR code, a TransferSyntaxUID that is none, an element longer than
the file, told apart from a cut-short copy), RescaleSlope / RescaleIntercept or a file window
that are not finite numbers, a modality LUT that does not apply, slice positions that are not
numbers, a spacing no resampling can honour, and any NaN / infinite value after the LUT, the
window or preprocessing: no non-finite pixel reaches training. An error nothing foresaw in one
file is that file's skip reason ("unexpected error ..."), never the folder's end. One file is one
sample: a second name of it (a link, ``./x.dcm``) is folded onto it (`keys`), and a path or link
leading outside the data folder is never opened (`common.datasets.paths`).
`fedclinic site validate` reads the rows through the same `loader.read_labelled`, so its sample
count is the loader's.

Modules, in the order a file travels through them: `header` (one file's header, the file error),
`pixels` (decode, rescale, window), `spacing` (pixel spacing and slice thickness tags), `series`
(slice order, one volume), `scan` (every file under a folder), `keys` (which files a labels.csv
key names), `options`, `sample` (one sample through the cache) and `loader` (the labelled folder
as a `Dataset`).
"""
