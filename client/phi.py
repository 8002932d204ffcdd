"""Which patient-identifying DICOM attributes a file carries (counted, never read out).

`fedclinic site validate` reports, per attribute, how many files hold a non-empty value, so a site
can see whether its collection was de-identified before it joins a federation. The values
themselves are never returned, printed or written anywhere by this module.
"""

from __future__ import annotations

from collections.abc import Iterable

import pydicom

# Attributes that identify a patient, a clinician or the hospital (DICOM PS3.15 Annex E, basic
# de-identification profile), by keyword. Order is the order of the report's PHI table.
PHI_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "AccessionNumber",
    "StudyID",
    "PerformingPhysicianName",
    "OperatorsName",
)
_PHI_SET = frozenset(PHI_KEYWORDS)


def _is_empty(value: object) -> bool:
    """True for absent/blank values: None, '', whitespace, '^^^' person names, empty sequences."""
    if value is None:
        return True
    if isinstance(value, (bytes, bytearray)):
        return not bytes(value).strip(b" \x00^")
    if isinstance(value, str):
        return not value.strip(" \x00^")
    if isinstance(value, pydicom.valuerep.PersonName):
        return not str(value).strip(" \x00^=")
    if isinstance(value, Iterable):
        return all(_is_empty(item) for item in value)
    return False


def phi_keywords_present(ds: pydicom.Dataset) -> frozenset[str]:
    """Keywords from `PHI_KEYWORDS` with a non-empty value anywhere in ``ds`` (nested sequences
    included: identifiers are often repeated inside request or reference sequences)."""
    found: set[str] = set()
    for elem in ds.iterall():
        keyword = elem.keyword
        if keyword in _PHI_SET and keyword not in found:
            if elem.VR == "SQ":
                if len(elem.value):
                    found.add(keyword)
            elif not _is_empty(elem.value):
                found.add(keyword)
    return frozenset(found)


def count_phi(datasets: Iterable[pydicom.Dataset]) -> dict[str, int]:
    """Number of datasets carrying each PHI attribute, for attributes found at least once, in
    `PHI_KEYWORDS` order."""
    counts = dict.fromkeys(PHI_KEYWORDS, 0)
    for ds in datasets:
        for keyword in phi_keywords_present(ds):
            counts[keyword] += 1
    return {k: n for k, n in counts.items() if n}
