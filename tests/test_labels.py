"""labels.csv parsing: examples of each rule, and property-based round trips and junk input."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.datasets.base import DataError
from common.datasets.labels import KEY_COLUMNS, Labels, parse_labels, read_labels


def test_basic_table_with_split_bom_blank_lines_and_whitespace():
    text = ("\ufeffSeriesInstanceUID , label, split\n\n"
            " 1.2.3 , pneumonia ,train\n"
            "1.2.4,normal, TEST \n"
            "\n"
            "1.2.5,normal,val\n\n")
    labels = parse_labels(text)
    assert labels == Labels("SeriesInstanceUID", ("1.2.3", "1.2.4", "1.2.5"),
                            ("pneumonia", "normal", "normal"), ("normal", "pneumonia"),
                            ("train", "test", "val"), lines=(3, 4, 6))
    assert labels.class_ids().tolist() == [1, 0, 0]


def test_integer_labels_are_ordered_numerically_and_extra_columns_ignored():
    labels = parse_labels("path,age,label\na.dcm,50,10\nb.dcm,61,2\nc.dcm,70,-1\nd.dcm,1,2\n")
    assert labels.key_column == "path" and labels.splits is None
    assert labels.class_names == ("-1", "2", "10")
    assert labels.class_ids().tolist() == [2, 1, 0, 1]
    assert labels.class_ids().dtype == np.int64


def test_string_labels_are_sorted_and_key_column_is_case_insensitive():
    labels = parse_labels("sopinstanceuid,Label\n1,b\n2,a\n3,10\n")
    assert labels.key_column == "SOPInstanceUID" and labels.class_names == ("10", "a", "b")


@pytest.mark.parametrize("text, pattern", [
    ("", "empty"),
    ("label\nx\n", "exactly one key column.*found none"),
    ("path,SOPInstanceUID,label\na,1,x\n", "found path, SOPInstanceUID"),
    ("path,diagnosis\na,x\n", "no 'label' column"),
    ("path,label\n", "no rows"),
    ("path,label\na,x\na,y\n", "line 3: duplicate path 'a' \\(first on line 2\\)"),
    ("path,label\na,x\n ,y\n", "line 3: empty path"),
    ("path,label\na,x\n\nb,  \n", "line 4: empty label"),
    ("path,label\na,x,extra\n", "line 2: 3 cells but the header"),
    ("path,label,split\na,x,training\n", "line 2: split='training'; expected one of train"),
    ("path,label,label\na,x,y\n", "'label' appears twice"),
    ('path,label\n"a,x\n', "malformed CSV|cells but the header"),
])
def test_bad_tables_raise_data_error_naming_source_and_line(text, pattern):
    with pytest.raises(DataError, match=pattern) as err:
        parse_labels(text, source="site/labels.csv")
    assert str(err.value).startswith("site/labels.csv:")


def test_read_labels_file_errors(tmp_path):
    with pytest.raises(DataError, match="labels.csv: not found"):
        read_labels(tmp_path / "labels.csv")
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("path,label\nä.dcm,x\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_labels(bad)
    good = tmp_path / "labels.csv"
    good.write_bytes("\ufeffpath,label\r\nä.dcm,x\r\nb.dcm,y\r\n".encode("utf-8"))
    assert read_labels(good).keys == ("ä.dcm", "b.dcm")


# --------------------------------------------------------------------------- properties

# Cell text: anything printable that survives CSV quoting, without surrounding whitespace
# (the parser strips it) and not blank.
_cell = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufeff"),
                min_size=1, max_size=12).map(str.strip).filter(bool)
_int_label = st.integers(-5, 30).map(str)


@st.composite
def _tables(draw):
    keys = draw(st.lists(_cell, min_size=1, max_size=15, unique=True))
    labels = draw(st.lists(st.one_of(_int_label, _cell) if draw(st.booleans()) else _int_label,
                           min_size=len(keys), max_size=len(keys)))
    splits = draw(st.none() | st.lists(st.sampled_from(("train", "val", "test")),
                                       min_size=len(keys), max_size=len(keys)))
    key_column = draw(st.sampled_from(KEY_COLUMNS))
    extra = draw(st.booleans())
    columns = [key_column, "label"] + (["split"] if splits else []) + (["note"] if extra else [])
    order = draw(st.permutations(columns))
    return key_column, keys, labels, splits, order


def _write(key_column, keys, labels, splits, order, quoting) -> str:
    out = io.StringIO()
    writer = csv.writer(out, quoting=quoting)
    writer.writerow(order)
    for i, key in enumerate(keys):
        row = {key_column: key, "label": labels[i], "note": "x, \"y\""}
        if splits:
            row["split"] = splits[i]
        writer.writerow([row[c] for c in order])
    return out.getvalue()


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(_tables(), st.sampled_from((csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC)))
def test_round_trip_through_the_csv_module(table, quoting):
    key_column, keys, labels, splits, order = table
    parsed = parse_labels(_write(key_column, keys, labels, splits, order, quoting))
    assert parsed.key_column == key_column
    assert parsed.keys == tuple(keys) and parsed.labels == tuple(labels)
    assert parsed.splits == (None if splits is None else tuple(splits))
    ids = parsed.class_ids()
    assert ids.shape == (len(keys),) and ids.min() >= 0 and ids.max() < len(parsed.class_names)
    # same label <-> same class; names in numeric order for integers, else sorted strings
    for i in range(len(keys)):
        for j in range(len(keys)):
            same = (int(labels[i]) == int(labels[j])) if parsed.integer_labels else (
                labels[i] == labels[j])
            assert (ids[i] == ids[j]) == same
    if parsed.integer_labels:
        assert [int(n) for n in parsed.class_names] == sorted({int(x) for x in labels})
    else:
        assert list(parsed.class_names) == sorted(set(labels))


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=200))
def test_junk_text_only_ever_raises_data_error(text):
    try:
        parsed = parse_labels(text)
    except DataError:
        return
    assert len(parsed.keys) == len(parsed.labels) >= 1


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.lists(st.text(max_size=8), max_size=5), max_size=6),
       st.sampled_from(("path,label", "SeriesInstanceUID,label,split", "")))
def test_csv_shaped_junk_only_ever_raises_data_error(rows, header):
    text = header + "\n" + "\n".join(",".join(r) for r in rows)
    try:
        parse_labels(text)
    except DataError:
        pass


# --------------------------------------------------------------------------- one file, one key

@pytest.mark.parametrize("first, second", [
    ("x.dcm", "./x.dcm"), ("sub/x.dcm", "sub\\x.dcm"), ("sub/x.dcm", "sub/../sub/x.dcm"),
    ("sub/x.dcm", "sub//x.dcm"), ("./a/./x.dcm", "a/x.dcm")])
def test_two_spellings_of_one_path_are_a_duplicate_naming_both_lines(first, second):
    with pytest.raises(DataError) as err:
        parse_labels(f"path,label\n{first},a\n{second},b\n", source="labels.csv")
    message = str(err.value)
    assert message.startswith("labels.csv: line 3: duplicate path") and "first on line 2" in message
    assert repr(second) in message and "one file is one sample" in message


def test_uid_keys_are_not_path_normalised():
    parsed = parse_labels("SeriesInstanceUID,label\n1.2.3,a\n./1.2.3,b\n")
    assert parsed.keys == ("1.2.3", "./1.2.3")


@pytest.mark.parametrize("text, message", [
    ("../other/x.dcm", "leads outside the data folder"), ("/etc/passwd", "absolute path"),
    ("C:\\\\data\\\\x.dcm", "absolute path"), ("sub/../../x.dcm", "leads outside"),
    (".", "names no file")])
def test_the_path_rule_refuses_paths_leaving_the_data_folder(tmp_path, text, message):
    from common.datasets.paths import OutsideDataFolder, inside, normal_path

    with pytest.raises(OutsideDataFolder, match=message):
        normal_path(text)
    with pytest.raises(OutsideDataFolder):
        inside(tmp_path, text)


def test_the_path_rule_follows_links_and_keeps_inside_ones(tmp_path):
    from common.datasets.paths import OutsideDataFolder, inside, normal_path

    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "x.dcm").write_bytes(b"x")
    (tmp_path / "secret").write_bytes(b"s")
    (root / "in.dcm").symlink_to(root / "sub" / "x.dcm")
    (root / "out.dcm").symlink_to(tmp_path / "secret")
    assert normal_path("sub\\.\\x.dcm") == "sub/x.dcm"
    assert inside(root, "./sub/../in.dcm") == root / "in.dcm"
    with pytest.raises(OutsideDataFolder, match="a link leading outside the data folder: "
                                                "'out.dcm' resolves to .*secret"):
        inside(root, "out.dcm")
