"""MedMNIST reader: official layouts, task kinds, clear errors, and md5-checked cached downloads.

All files are tiny and written here in the official layout; downloads come from a local HTTP
server on 127.0.0.1, never the internet.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from common.config import RunConfig
from common.datasets import DataError, load_dataset
from common.datasets import medmnist as mm

SHARED = Path("/work/shared/data/medmnist/pneumoniamnist.npz")


def _write(path: Path, image_shape: tuple[int, ...], labels: np.ndarray | None = None,
           sizes: tuple[int, int, int] = (10, 4, 6), seed: int = 0, **override) -> Path:
    """An .npz in the official layout; ``override`` replaces or (value None) drops keys."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(mm.SPLITS, sizes):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n,) + image_shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (rng.integers(0, 2, (n, 1), dtype=np.uint8)
                                     if labels is None else labels[:n])
    arrays.update(override)
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_2d_grey_binary_channel_first(tmp_path):
    path = _write(tmp_path / "myscans.npz", (28, 28))
    ds = mm.load(str(path))
    raw = np.load(path)
    assert ds.train.images.shape == (10, 1, 28, 28) and ds.train.images.dtype == np.float32
    np.testing.assert_array_equal(ds.train.images[:, 0], raw["train_images"] / np.float32(255))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (10, 4, 6)
    assert ds.train.labels.dtype == np.int64 and ds.train.labels.shape == (10,)
    np.testing.assert_array_equal(ds.test.labels, raw["test_labels"][:, 0])
    assert (ds.task.kind, ds.task.num_classes, ds.task.channels, ds.task.spatial_dims,
            ds.task.size) == ("binary", 2, 1, 2, 28)
    assert ds.name == "myscans" and ds.train.masks is None


def test_2d_rgb_is_transposed_to_channel_first(tmp_path):
    labels = np.arange(10, dtype=np.uint8).reshape(-1, 1) % 5
    path = _write(tmp_path / "colour.npz", (32, 32, 3), labels=labels)
    ds = mm.load(str(path))
    raw = np.load(path)["train_images"]
    assert ds.train.images.shape == (10, 3, 32, 32)
    np.testing.assert_allclose(ds.train.images[3, 2], raw[3, :, :, 2] / 255.0, atol=1e-7)
    assert (ds.task.kind, ds.task.num_classes, ds.task.channels) == ("multiclass", 5, 3)
    assert ds.task.class_names == ("0", "1", "2", "3", "4")


def test_3d_volume_gets_a_channel_axis(tmp_path):
    path = _write(tmp_path / "vol.npz", (8, 8, 8))
    ds = mm.load(str(path))
    assert ds.train.images.shape == (10, 1, 8, 8, 8)
    assert (ds.task.spatial_dims, ds.task.channels, ds.task.size) == (3, 1, 8)


def test_multilabel(tmp_path):
    labels = np.random.default_rng(1).integers(0, 2, (10, 5), dtype=np.uint8)
    ds = mm.load(str(_write(tmp_path / "findings.npz", (28, 28), labels=labels)))
    assert ds.task.kind == "multilabel" and ds.task.num_classes == 5
    assert ds.train.labels.dtype == np.float32 and ds.train.labels.shape == (10, 5)
    np.testing.assert_array_equal(ds.train.labels, labels)


def test_known_subset_names_take_the_official_task(tmp_path):
    labels = np.array([[0], [1], [2], [3], [4]] * 2, dtype=np.uint8)
    ds = mm.load(str(_write(tmp_path / "retinamnist.npz", (28, 28, 3), labels=labels)))
    assert (ds.name, ds.task.kind, ds.task.num_classes) == ("retinamnist", "ordinal", 5)
    chest = np.random.default_rng(0).integers(0, 2, (10, 14), dtype=np.uint8)
    ds = mm.load(str(_write(tmp_path / "chestmnist_64.npz", (64, 64), labels=chest)))
    assert ds.task.kind == "multilabel" and ds.task.class_names[0] == "atelectasis"
    ds = mm.load(str(_write(tmp_path / "pneumoniamnist.npz", (28, 28))))
    assert ds.task.class_names == ("normal", "pneumonia") and ds.task.kind == "binary"


def test_subset_table_matches_the_local_md5sums():
    sums = {"pneumoniamnist": "28209eda62fecd6e6a2d98b1501bb15f",
            "adrenalmnist3d": "bbd3c5a5576322bc4cdfea780653b1ce"}
    for name, md5 in sums.items():
        assert mm.SUBSETS[name].md5_for(28) == md5
    assert mm.parse_subset("PathMNIST_224") == ("pathmnist", 224)
    assert mm.parse_subset("adrenalmnist3d") == ("adrenalmnist3d", 28)
    assert mm.file_name("pathmnist", 64) == "pathmnist_64.npz"
    assert mm.SUBSETS["adrenalmnist3d"].sizes == (28, 64)
    with pytest.raises(DataError, match="224 not published.*28, 64"):
        mm.parse_subset("nodulemnist3d_224")


def test_corrupt_file_raises_with_path(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(DataError, match=r"broken\.npz.*not a readable \.npz.*train_images"):
        mm.load(str(path))
    whole = _write(tmp_path / "whole.npz", (28, 28)).read_bytes()
    path.write_bytes(whole[: len(whole) // 2])                     # truncated download
    with pytest.raises(DataError, match=r"broken\.npz.*not a readable \.npz"):
        mm.load(str(path))


def test_single_npy_array_is_rejected(tmp_path):
    path = tmp_path / "array.npz"
    with path.open("wb") as fh:
        np.save(fh, np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"array\.npz: a single \.npy array.*train_images"):
        mm.load(str(path))


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.npz: file not found"):
        mm.load(str(tmp_path / "nothere.npz"))
    with pytest.raises(DataError, match=r"'fakemnist'.*known subsets.*pneumoniamnist"):
        mm.load("fakemnist", cache_dir=tmp_path)


def test_missing_key_raises_naming_the_key(tmp_path):
    path = _write(tmp_path / "nokey.npz", (28, 28), val_labels=None)
    with pytest.raises(DataError, match=r"nokey\.npz: missing key\(s\) val_labels"):
        mm.load(str(path))


def test_length_mismatch_raises_naming_both_keys(tmp_path):
    path = _write(tmp_path / "short.npz", (28, 28), test_labels=np.zeros((5, 1), np.uint8))
    with pytest.raises(DataError, match=r"short\.npz: test_labels has 5 rows but test_images has 6"):
        mm.load(str(path))


@pytest.mark.parametrize("override, message", [
    ({"train_images": np.zeros((10, 28, 28), np.float32)}, "train_images dtype float32: expected uint8"),
    ({"val_images": np.zeros((4, 14, 14), np.uint8)}, r"val_images shape \(4, 14, 14\)"),
    ({"train_images": np.zeros((10, 28), np.uint8)}, r"train_images shape \(10, 28\)"),
    ({"test_labels": np.zeros((6, 1), np.float32)}, "test_labels dtype float32: expected integers"),
    ({"train_labels": np.full((10, 1), -1, np.int64)}, "train_labels has negative value"),
])
def test_wrong_dtype_or_dims_raise(tmp_path, override, message):
    path = _write(tmp_path / "bad.npz", (28, 28), **override)
    with pytest.raises(DataError, match=rf"bad\.npz: .*{message}"):
        mm.load(str(path))


def test_known_subset_with_wrong_layout_raises(tmp_path):
    path = _write(tmp_path / "pathmnist.npz", (28, 28))   # pathmnist is RGB
    with pytest.raises(DataError, match=r"pathmnist\.npz.*3 channel"):
        mm.load(str(path))


# ------------------------------------------------------------------------------ downloading


@pytest.fixture()
def server(tmp_path):
    """A local HTTP server over tmp_path/'www'; yields (base_url, folder, request log)."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server naming)
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, requests
    httpd.shutdown()
    httpd.server_close()


def _serve_pneumonia(root: Path, monkeypatch, md5: str | None = None) -> str:
    path = _write(root / "pneumoniamnist.npz", (28, 28))
    real = hashlib.md5(path.read_bytes()).hexdigest()
    info = dataclasses.replace(mm.SUBSETS["pneumoniamnist"], md5=(md5 or real,) + ("0" * 32,) * 3)
    monkeypatch.setitem(mm.SUBSETS, "pneumoniamnist", info)
    return real


def test_download_verifies_md5_and_is_cached(tmp_path, server, monkeypatch, capsys):
    base, root, requests = server
    real = _serve_pneumonia(root, monkeypatch)
    cache = tmp_path / "cache"
    ds = mm.load("pneumoniamnist", cache_dir=cache, base_url=base)
    cached = cache / "pneumoniamnist.npz"
    assert hashlib.md5(cached.read_bytes()).hexdigest() == real
    assert (len(ds.train), ds.task.kind, ds.name) == (10, "binary", "pneumoniamnist")
    assert requests == ["/pneumoniamnist.npz?download=1"]
    assert "downloading pneumoniamnist.npz" in capsys.readouterr().err
    mm.load("pneumoniamnist", cache_dir=cache, base_url=base)
    assert len(requests) == 1                              # served from the cache
    assert not list(cache.glob("*.part"))


def test_download_with_wrong_md5_fails_and_removes_the_file(tmp_path, server, monkeypatch):
    base, root, _ = server
    _serve_pneumonia(root, monkeypatch, md5="f" * 32)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"md5 mismatch.*expected f{32}"):
        mm.load("pneumoniamnist", cache_dir=cache, base_url=base)
    assert list(cache.iterdir()) == []


def test_download_error_and_env_overrides(tmp_path, server, monkeypatch):
    base, root, _ = server
    _serve_pneumonia(root, monkeypatch)
    monkeypatch.setenv("FEDCLINIC_CACHE", str(tmp_path / "envcache"))
    monkeypatch.setenv("FEDCLINIC_MEDMNIST_URL", base)
    assert mm.default_cache_dir() == tmp_path / "envcache" / "medmnist"
    ds = mm.load("pneumoniamnist")
    assert len(ds.test) == 6 and (tmp_path / "envcache" / "medmnist" / "pneumoniamnist.npz").is_file()
    with pytest.raises(DataError, match=r"breastmnist\.npz.*download failed"):
        mm.load("breastmnist", cache_dir=tmp_path / "c2", base_url=base)   # 404 on the server
    assert list((tmp_path / "c2").iterdir()) == []


def test_registry_reads_medmnist_from_data_path(tmp_path):
    path = _write(tmp_path / "reg.npz", (28, 28))
    ds = load_dataset(RunConfig(dataset="medmnist", data_path=str(path)))
    assert ds.name == "reg" and len(ds.val) == 4


@pytest.mark.skipif(not SHARED.is_file(), reason="real PneumoniaMNIST file not available")
def test_real_pneumoniamnist_file():
    ds = mm.load(str(SHARED))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (4708, 524, 624)
    assert ds.task.kind == "binary" and ds.train.images.shape[1:] == (1, 28, 28)
    assert set(np.unique(ds.train.labels)) == {0, 1}


# --------------------------------------------------------------------------- arrays that lie

def _lying_npz(path: Path, key: str, shape: tuple[int, ...]) -> Path:
    """A valid-looking .npz whose member ``key`` declares ``shape`` (the data stays small)."""
    import io
    import zipfile

    arrays = dict(np.load(_write(path.with_name("source.npz"), (28, 28))))
    with zipfile.ZipFile(path, "w") as zf:
        for name in arrays:
            out = io.BytesIO()
            array = arrays[name]
            header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False,
                      "shape": shape if name == key else array.shape}
            np.lib.format.write_array_header_1_0(out, header)
            out.write(array.tobytes())
            zf.writestr(f"{name}.npy", out.getvalue())
    return path


def test_a_member_declaring_a_huge_shape_is_refused_before_any_allocation(tmp_path,
                                                                          monkeypatch):
    path = _lying_npz(tmp_path / "site.npz", "val_labels", (10 ** 11, 1))
    monkeypatch.setattr(mm.np, "load", lambda *a, **k: pytest.fail("np.load was reached"))
    with pytest.raises(DataError) as err:
        mm.load(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: member val_labels.npy declares shape (100000000000, 1)")
    assert "100000000000 bytes" in message and "holds 4 bytes" in message


def test_a_text_file_named_npz_is_called_a_text_file(tmp_path):
    path = tmp_path / "site.npz"
    path.write_text("train_images,train_labels\n1,2\n")
    with pytest.raises(DataError, match=r"site\.npz: not a readable \.npz archive: a text file "
                                        r"\(it starts 'train_images,train_labels'\)") as err:
        mm.load(str(path))
    assert "pickled" not in str(err.value)


def test_a_huge_label_is_refused_naming_file_split_and_value(tmp_path):
    labels = np.zeros((10, 1), np.int64)
    labels[3, 0] = 10 ** 9
    path = _write(tmp_path / "site.npz", (28, 28), val_labels=labels[:4])
    with pytest.raises(DataError, match=rf"{path.name}: val_labels holds class 1000000000.* "
                                        rf"more than {mm.MAX_INFERRED_CLASSES} classes"):
        mm.load(str(path))
    known = _write(tmp_path / "pneumoniamnist.npz", (28, 28), test_labels=labels[:6] * 0 + 7)
    with pytest.raises(DataError, match=r"pneumoniamnist\.npz: test_labels has class 7; "
                                        r"expected 0..1"):
        mm.load(str(known))


def test_pickled_members_and_arrays_larger_than_memory_are_refused_by_header(tmp_path,
                                                                           monkeypatch):
    import io
    import zipfile

    from common.datasets.npz_archive import check_npz

    path = tmp_path / "objects.npz"
    out = io.BytesIO()
    np.save(out, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("train_labels.npy", out.getvalue())
    with pytest.raises(DataError, match="train_labels.npy holds Python objects"):
        check_npz(path, "keys ...")
    bomb = tmp_path / "bomb.npz"                  # honest headers, 1000:1 compression
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        out = io.BytesIO()
        np.save(out, np.zeros(5_000_000, np.uint8))
        zf.writestr("train_images.npy", out.getvalue())
    check_npz(bomb, "keys ...")
    monkeypatch.setattr("common.datasets.npz_archive.physical_memory", lambda: 1_000_000)
    with pytest.raises(DataError, match=r"bomb\.npz: its arrays need 0\.0 GiB, more than this "
                                        r"machine's"):
        check_npz(bomb, "keys ...")
