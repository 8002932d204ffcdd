"""Fuzzing what a hospital hands the site (issue 11): mutated DICOM headers and bytes,
labels.csv, .npz headers and MSD dataset.json, each run through `fedclinic site validate` and
the loader training uses.

Property (bench.fuzz_inputs.judge): a clean error naming the file (one bad file is one named,
skipped file, and a strict load stops on it), or a finite image of the declared shape with
validate counting exactly what the loader trains on; never an unhandled exception, a memory
blow-up, wrong data accepted, or one file loaded as two samples. The mutations are
bench.fuzz_inputs' (the before/after benchmark uses the same ones); hypothesis drives their
choices and parameters. The default run stays well under a minute; `-m slow` runs ten times as
many inputs.
"""

from __future__ import annotations

import random
import resource
import shutil
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import fuzz_inputs as fz

# The default run is derandomized (the same inputs every time, so CI is reproducible); the
# slow run draws fresh ones.
_SETTINGS = dict(deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def _bounded_memory():
    """A runaway allocation (a lying .npz header, a 10**9-class table) fails as MemoryError
    (a crash verdict) instead of exhausting the shared machine."""
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = vm + fz.MEMORY_HEADROOM
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")           # pydicom / numpy warn on most mutants
        yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _check(category: str, rng: random.Random, kind: str, workdir: Path) -> None:
    root = workdir / "case"
    shutil.rmtree(root, ignore_errors=True)
    try:
        inp = fz.BUILDERS[category](rng, root / "data", kind)
        outcome = fz.judge(inp, root / "cache")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert outcome.verdict in ("clean_error", "accepted"), (
        f"{outcome.mutation}: {outcome.detail}")


def _fuzz(category: str, examples: int, derandomize: bool = True):
    @settings(max_examples=examples, derandomize=derandomize, **_SETTINGS)
    @given(kind=st.sampled_from(fz.KINDS[category]), rng=st.randoms(use_true_random=False))
    def run(workdir: Path, kind: str, rng: random.Random) -> None:
        _check(category, rng, kind, workdir)
    return run


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("category, examples", [("dicom", 60), ("labels", 30), ("npz", 30),
                                                ("msd", 20)])
def test_mutated_inputs_give_a_named_error_or_a_finite_image(workdir, category, examples):
    _fuzz(category, examples)(workdir)


@pytest.mark.slow
@pytest.mark.parametrize("category, examples", [("dicom", 400), ("labels", 200), ("npz", 200),
                                                ("msd", 100)])
def test_mutated_inputs_long_run(workdir, category, examples):
    _fuzz(category, examples, derandomize=False)(workdir)


# Byte edits chosen by hypothesis itself (not bench's mutators): inserts, overwrites and cuts
# anywhere after the preamble of a clean file.
_EDIT = st.tuples(st.sampled_from(("insert", "overwrite", "delete")),
                  st.floats(0.0, 1.0, allow_nan=False), st.binary(min_size=1, max_size=12))


def _apply(data: bytes, edits: list[tuple[str, float, bytes]]) -> bytes:
    for op, where, chunk in edits:
        at = 128 + int(where * (len(data) - 128))
        if op == "insert":
            data = data[:at] + chunk + data[at:]
        elif op == "overwrite":
            data = data[:at] + chunk + data[at + len(chunk):]
        else:
            data = data[:at] + data[at + len(chunk):]
    return data


def _byte_edits(examples: int, derandomize: bool = True):
    @settings(max_examples=examples, derandomize=derandomize, **_SETTINGS)
    @given(edits=st.lists(_EDIT, min_size=1, max_size=4))
    def run(workdir: Path, edits: list) -> None:
        root = workdir / "bytes"
        shutil.rmtree(root, ignore_errors=True)
        try:
            data = root / "data"
            data.mkdir(parents=True)
            rows = fz.clean_site(data)
            fz.template_dicom(data / "mutant.dcm", random.Random(0))
            mutant = data / "mutant.dcm"
            mutant.write_bytes(_apply(mutant.read_bytes(), edits))
            (data / "labels.csv").write_text("path,label\n" + "\n".join(rows + ["mutant.dcm,a"]))
            inp = fz.FuzzInput("dicom", "hypothesis-bytes", data, "dicom", "mutant.dcm",
                               whole_may_fail=False, max_samples=5)
            outcome = fz.judge(inp, root / "cache")
        finally:
            shutil.rmtree(root, ignore_errors=True)
        assert outcome.verdict in ("clean_error", "accepted"), f"{edits}: {outcome.detail}"
    return run


def test_byte_edits_anywhere_in_a_dicom_file(workdir):
    _byte_edits(30)(workdir)


@pytest.mark.slow
def test_byte_edits_long_run(workdir):
    _byte_edits(400, derandomize=False)(workdir)


def test_the_judge_counts_wrong_data_as_a_crash(workdir, monkeypatch):
    """The property has teeth: an accepted NaN image or a skipped file validate does not name
    is a crash verdict, not 'accepted'."""
    import numpy as np

    from common.datasets.dicom import sample

    data = workdir / "teeth"
    shutil.rmtree(data, ignore_errors=True)
    inp = fz.dicom_input(random.Random(1), data / "data", "modality")
    real = sample._compute_sample
    monkeypatch.setattr(sample, "_check_image", lambda *a: None)
    monkeypatch.setattr(sample, "_compute_sample",
                        lambda files, opts: real(files, opts) * np.float32("nan"))
    outcome = fz.judge(inp, data / "cache")
    shutil.rmtree(data, ignore_errors=True)
    assert outcome.verdict == "crash" and "non-finite" in outcome.detail
