"""by-tag:KEYWORD partition: one site per DICOM tag value (the real hospital/scanner split)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.uid import generate_uid

from bench.dicom_files import write_dicom
from common import rundir
from common.config import ConfigError, RunConfig
from common.partition_spec import parse_partition
from common.datasets import load_dataset
from common.datasets.base import DataError, Split
from common.partitions.base import spec_text
from common.partitions.by_tag import partition_by_tag
from common.partitions.federation import build_federation
from common.partitions.label_skew import partition_indices

MAKERS = ("Zeta Medical", "Acme")      # written in this order; sites are ordered by value


def _collection(root: Path, per_maker: int = 8) -> dict[str, set[str]]:
    """per_maker CR images per manufacturer, labelled by SOPInstanceUID; StationName names each
    file. Returns manufacturer -> station names of its files."""
    rows, stations = ["SOPInstanceUID,label"], {m: set() for m in MAKERS}
    for m, maker in enumerate(MAKERS):
        for i in range(per_maker):
            label = i % 2
            img = np.full((10, 10), 200 + 3 * i, dtype=np.uint16)
            img[:, :5] += 600 * (1 - label)          # class 0: bright left, class 1: dim
            img[:, 5:] += 600 * label                # class 1: bright right
            sop, station = generate_uid(), f"st-{m}-{i}"
            write_dicom(root / f"{maker[:4]}{i}.dcm", img, modality="CR", sop=sop,
                        Manufacturer=maker, StationName=station,
                        InstitutionName="" if i == 0 else f"Hospital {m}")
            rows.append(f"{sop},{('effusion', 'normal')[label]}")
            stations[maker].add(station)
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return stations


def _cfg(tmp_path: Path, **kw) -> RunConfig:
    return RunConfig(**{"dataset": "dicom", "data_path": str(tmp_path / "data"),
                        "cache_dir": str(tmp_path / "cache"), "partition": "by-tag:Manufacturer",
                        "sites": 2, "test_fraction": 0.25, "val_fraction": 0.1, **kw})


def _site_tags(site, tag: str) -> set[str]:
    return set(Split.concat([site.train, site.val, site.test]).tags[tag].tolist())


def test_two_manufacturers_make_two_sites_holding_exactly_their_files(tmp_path):
    stations = _collection(tmp_path / "data")
    cfg = _cfg(tmp_path)
    data = load_dataset(cfg)
    fed = build_federation(data, cfg)
    assert len(fed.sites) == 2 and spec_text(fed.spec) == "by-tag:Manufacturer"
    pool = len(data.train) + (0 if data.val is None else len(data.val))
    assert sum(len(s.indices) for s in fed.sites) == pool            # every pool sample placed
    for site, maker in zip(fed.sites, sorted(MAKERS)):              # ordered by value
        assert _site_tags(site, "Manufacturer") == {maker}
        assert _site_tags(site, "StationName") <= stations[maker]
    held_out = set(data.test.tags["StationName"].tolist())
    placed = set().union(*(_site_tags(s, "StationName") for s in fed.sites))
    assert placed | held_out == stations[MAKERS[0]] | stations[MAKERS[1]]
    assert not placed & held_out


def test_site_count_must_match_the_tag_values(tmp_path):
    _collection(tmp_path / "data")
    cfg = _cfg(tmp_path, sites=3)
    with pytest.raises(ConfigError, match=r"data holds 2: 'Acme', 'Zeta Medical'.*sites=3.*"
                                          r"Set sites=2"):
        build_federation(load_dataset(cfg), cfg)
    # a missing value (one file per maker has no InstitutionName) counts as a value of its own
    cfg = _cfg(tmp_path, partition="by-tag:InstitutionName", sites=2)
    with pytest.raises(ConfigError, match=r"3: '' \(missing\), 'Hospital 0', 'Hospital 1'"):
        build_federation(load_dataset(cfg), cfg)


def test_by_tag_partition_keeps_any_requested_keyword(tmp_path):
    _collection(tmp_path / "data")
    cfg = _cfg(tmp_path, partition="by-tag:PatientID", sites=1)
    fed = build_federation(load_dataset(cfg), cfg)
    assert _site_tags(fed.sites[0], "PatientID") == {"anon"}
    with pytest.raises(DataError, match="'NotAKeyword' is not a DICOM keyword"):
        load_dataset(_cfg(tmp_path, partition="by-tag:NotAKeyword"))


def test_datasets_without_tags_are_refused():
    cfg = RunConfig(dataset="synthetic", num_samples=40, sites=2, partition="by-tag:Manufacturer")
    with pytest.raises(DataError, match="no per-sample tags.*dataset=dicom"):
        build_federation(load_dataset(cfg), cfg)
    with pytest.raises(ConfigError, match="partition_by_tag"):
        partition_indices(np.zeros(12, np.int64), 2, parse_partition("by-tag:Modality"), 0)


def test_partition_by_tag_groups_and_orders_values():
    values = np.array(["b", "a", "b", "c", "a", "c", "a", "b", "c"])
    parts = partition_by_tag(values, 3, "Manufacturer")
    assert [p.tolist() for p in parts] == [[1, 4, 6], [0, 2, 7], [3, 5, 8]]
    with pytest.raises(ConfigError, match="leaves site 1 with 1 sample"):
        partition_by_tag(np.array(["a", "a", "a", "b"]), 2, "Manufacturer")


def test_split_tags_follow_subset_and_concat():
    a = Split(np.zeros((3, 1, 2, 2), np.float32), np.arange(3), tags={"M": np.array(["x", "y", "z"]),
                                                                      "S": np.array(["1", "2", "3"])})
    b = Split(np.zeros((2, 1, 2, 2), np.float32), np.arange(2), tags={"M": np.array(["u", "v"])})
    assert a.subset(np.array([2, 0])).tags["M"].tolist() == ["z", "x"]
    both = Split.concat([a, b])
    assert list(both.tags) == ["M"] and both.tags["M"].tolist() == ["x", "y", "z", "u", "v"]
    assert Split.concat([a, Split(b.images, b.labels)]).tags is None
    assert Split(b.images, b.labels).subset(np.array([0])).tags is None


def test_two_site_simulation_on_dicom(tmp_path):
    from simulations.simulate import simulate

    torch.set_num_threads(1)
    _collection(tmp_path / "data", per_maker=14)   # the audit needs >= 2 test images per site
    (tmp_path / "data" / "broken.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02" * 7)
    cfg = _cfg(tmp_path, rounds=1, local_epochs=1, model="cnn", width=4, baselines="",
               batch_size=4, output_dir=str(tmp_path / "runs"))
    outcome = simulate(cfg, echo=lambda line: None, run_name="bytag")
    summary = json.loads((outcome.run_dir / rundir.SUMMARY).read_text())
    assert sorted(summary["federated"]["sites"]) == ["0", "1"]
    lines = rundir.read_jsonl(outcome.run_dir / rundir.METRICS)
    assert [line["round"] for line in lines] == [0, 1]
    assert sorted(lines[1]["sites"]) == ["0", "1"]
    part = json.loads((outcome.run_dir / "partition.json").read_text())
    assert part["partition"] == "by-tag:Manufacturer" and len(part["sites"]) == 2
    assert [s["file"].endswith("broken.dcm") for s in summary["skipped_files"]] == [True]
    assert "1 data file(s) were skipped" in (outcome.run_dir / rundir.REPORT).read_text()
