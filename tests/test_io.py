"""Loading and validating inputs: every mistake is one clear InputError."""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import pytest

from xentaudit.errors import InputError
from xentaudit.io import (
    ArraySource,
    bad_logit_rows,
    file_or_json,
    load_inputs,
    open_arrays,
    parse_json,
    prefetched,
    prepare,
)


def logits_of(spec: str) -> np.ndarray:
    return load_inputs(spec, "[0]")[0]


def test_inline_json_and_npy_load(tmp_path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.array([[1.0, 2.0]], dtype=np.float32))
    assert logits_of(str(path)).dtype == np.float32
    assert logits_of("[[1, 2.5]]").tolist() == [[1.0, 2.5]]


def test_inline_json_spells_non_finite_numbers_as_strings_or_json_extensions() -> None:
    got = parse_json(
        '[[0, "-inf", "inf", "nan", "-Infinity", "INFINITY", "NaN", -Infinity, Infinity, NaN]]',
        "--logits",
    )
    inf = np.inf
    expected = [[0, -inf, inf, np.nan, -inf, inf, np.nan, -inf, inf, np.nan]]
    assert got.dtype == np.float64 and np.array_equal(got, expected, equal_nan=True)


@pytest.mark.parametrize("spec", ["[[true, false, 1.0]]", "[0, true]", "[[false]]"])
def test_inline_json_true_and_false_are_no_numbers(spec: str) -> None:
    # numpy would read them as 1 and 0: logits nobody wrote
    with pytest.raises(InputError, match=r"^--logits: the JSON has (true|false); entries must"):
        parse_json(spec, "--logits")


def test_npz_labels_keys_and_bfloat16_are_read_as_check_reads_them(tmp_path) -> None:
    x = np.array([[1.5, -2.25, 3.0]], dtype=ml_dtypes.bfloat16)
    np.save(tmp_path / "b.npy", x)  # ml_dtypes writes the anonymous 2-byte dtype "V2"
    got, labels = load_inputs(str(tmp_path / "b.npy"), "[2]")
    assert got.dtype == ml_dtypes.bfloat16 and np.array_equal(got, x) and labels.tolist() == [2]
    np.savez(tmp_path / "k.npz", a=x.astype(np.float32), b=np.array([1]))
    got, labels = load_inputs(str(tmp_path / "k.npz"), None, "a", "b")
    assert got.tolist() == [[1.5, -2.25, 3.0]] and labels.tolist() == [1]
    # --labels wins over the .npz's own labels; with --labels-key named too, the two conflict
    np.savez(tmp_path / "l.npz", logits=x.astype(np.float32), labels=np.array([1]))
    assert load_inputs(str(tmp_path / "l.npz"), "[0]")[1].tolist() == [0]
    with pytest.raises(InputError, match=r"^--labels-key 'b' names no array: --labels gives"):
        load_inputs(str(tmp_path / "k.npz"), "[0]", "a", "b")
    with pytest.raises(InputError, match=r"^--labels-key 'labels' names no array: .*b\.npy is no"):
        load_inputs(str(tmp_path / "b.npy"), None, labels_key="labels")


def test_arrays_in_memory_are_chunked_like_files(tmp_path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((5, 2), dtype=np.float32))
    _, from_memory = open_arrays(tmp_path / "x.npy", np.arange(5), "logits", None)
    assert from_memory is not None and from_memory.label == "--labels"
    assert [c.ravel().tolist() for c in from_memory.chunks(2, 1)] == [[0, 1], [2, 3], [4]]
    assert ArraySource.of(np.arange(3), "y").read().tolist() == [0, 1, 2]


def test_pickled_npy_is_refused_not_unpickled(tmp_path) -> None:
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="never unpickles"):
        logits_of(str(path))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("[[1, 2]", "neither a .npy file nor valid JSON"),
        ("[[1, 2], [3]]", "ragged"),
        ('[["a"]]', "the JSON has the string 'a'"),
        ("[[1, {}]]", "list of numbers"),
        ("missing.npy", "no such file: missing.npy"),
        ("missing.npz", "no such file: missing.npz"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        logits_of(spec)


def test_labels_are_needed_unless_the_npz_has_them(tmp_path) -> None:
    np.savez(tmp_path / "x.npz", logits=np.zeros((1, 2)))
    with pytest.raises(InputError, match="has no array 'labels' for the labels; pass --labels"):
        load_inputs(str(tmp_path / "x.npz"), None)
    with pytest.raises(InputError, match="--logits came without labels; pass --labels too"):
        load_inputs("[[1, 2]]", None)


def test_truncated_npy_is_an_input_error(tmp_path) -> None:
    path = tmp_path / "cut.npy"
    np.save(path, np.zeros((100, 10)))
    whole = path.read_bytes()
    path.write_bytes(whole[:300])
    message = f"cut.npy is truncated: expected {len(whole)} bytes, found 300; write the file again"
    with pytest.raises(InputError, match=re.escape(message)):
        logits_of(str(path))


def test_every_npy_format_version_is_read(tmp_path) -> None:
    x = np.arange(12, dtype=">f8").reshape(3, 4)  # big-endian, as another machine may write
    for version in ((1, 0), (2, 0), (3, 0)):
        path = tmp_path / f"v{version[0]}.npy"
        with path.open("wb") as stream:
            np.lib.format.write_array(stream, x, version=version)
        assert path.read_bytes()[6:8] == bytes(version)
        got = logits_of(str(path))
        assert got.dtype == x.dtype and np.array_equal(got, x)


def test_label_errors_name_the_offending_rows() -> None:
    x = np.zeros((4, 2))
    with pytest.raises(InputError, match="labels contain NaN or inf in rows 1, 3; label weights"):
        prepare(x, np.array([[0.5, 0.5], [np.inf, 0], [1, 0], [0, np.nan]]))
    with pytest.raises(InputError, match="class labels must be whole numbers, not in rows 0, 2;"):
        prepare(x, np.array([0.5, 1, np.inf, 0]))


def test_label_dtypes_are_checked_before_reading_for_arrays_in_memory_too(tmp_path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 2), np.float32))
    for labels in (np.zeros(3, np.complex64), np.array(["0", "1", "0"]), np.zeros(3, object)):
        with pytest.raises(InputError, match="labels must be integer classes or weights"):
            open_arrays(tmp_path / "x.npy", labels, "logits", None)


def test_sparse_dense_and_soft_labels() -> None:
    x = np.zeros((2, 3))
    sparse = prepare(x, np.array([2, 0]))
    assert sparse.classes.tolist() == [2, 0] and sparse.weights is None  # no one-hot matrix
    one_hot = prepare(x, np.array([[0, 1, 0], [0, 0, 1.0]]))
    assert one_hot.classes.tolist() == [1, 2]
    assert one_hot.weights.tolist() == [[0, 1, 0], [0, 0, 1]]
    soft = prepare(x, np.array([[0.5, 0.5, 0], [0, 0, 1.0]]))
    assert soft.classes is None


def test_audited_formats_are_kept_and_other_numbers_become_float64() -> None:
    labels = np.array([0, 1])
    for dtype in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64):
        x = np.array([[1.5, -2.0], [0.25, 3.0]], dtype=dtype)
        kept = prepare(x, labels).logits
        assert kept.dtype == x.dtype and np.array_equal(kept, x)
    assert prepare(np.array([[1, 2], [3, 4]]), labels).logits.dtype == np.float64


def test_leading_axes_are_flattened_and_one_row_is_allowed() -> None:
    assert prepare(np.zeros((2, 4, 3)), np.zeros((2, 4), dtype=int)).shape == (8, 3)
    assert prepare(np.array([-500.0, 500.0, -500.0]), np.array(1)).shape == (1, 3)


def test_minus_inf_logits_are_valid_input() -> None:
    batch = prepare(np.array([[-np.inf, 0.0]]), np.array([1]))
    assert batch.logits[0, 0] == -np.inf


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        ([[np.nan, 1.0]], [0], "NaN in row 0"),
        ([[0.0, 1.0], [np.inf, 1.0]], [0, 0], r"\+inf in row 1"),
        ([[-np.inf, -np.inf]], [0], "every logit is -inf in row 0"),
        ([[0.0, 1.0]], [2], r"out of range in row 0: they must lie in \[0, 1\]"),
        ([[0.0, 1.0]], [-1], "out of range"),
        ([[0.0, 1.0]], [0.5], "whole numbers"),
        ([[0.0, 1.0]], [[0.5, -0.5]], "negative weights"),
        ([[0.0, 1.0]], [[np.nan, 1.0]], "NaN or inf"),
        ([[0.0, 1.0]], [[1.0, 0.0, 0.0]], r"do not fit logits of shape \(1, 2\)"),
        ([], [], "non-empty"),
    ],
)
def test_invalid_inputs(logits: list, labels: list, message: str) -> None:
    with pytest.raises(InputError, match=message):
        prepare(np.array(logits), np.array(labels))


def test_many_bad_rows_are_summarised() -> None:
    x = np.full((9, 2), np.nan)
    with pytest.raises(InputError, match="rows 0, 1, 2, 3, 4 and 4 more"):
        prepare(x, np.zeros(9, dtype=int))


def test_bad_logit_rows_from_one_row_maximum() -> None:
    for dtype in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64):
        x = np.array(
            [[0.0, 1.0], [np.nan, 1.0], [np.inf, 0.0], [-np.inf, -np.inf], [-np.inf, 2.0]],
            dtype=dtype,
        )
        masks = bad_logit_rows(x)
        assert np.flatnonzero(masks["NaN"]).tolist() == [1]
        assert np.flatnonzero(masks["+inf"]).tolist() == [2]
        assert np.flatnonzero(masks["-inf only"]).tolist() == [3]


def test_prefetched_keeps_order_and_hands_on_the_producers_error() -> None:
    def produce():
        yield from range(5)
        raise InputError("truncated at item 5")

    got = []
    with pytest.raises(InputError, match="item 5"):
        for item in prefetched(produce()):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]
    assert list(prefetched(iter([]))) == []


@pytest.mark.parametrize("depth", [70, 900, 50_000])
def test_json_nested_too_deeply_is_one_line(depth: int) -> None:
    # 70 passes the parser but not numpy's 64 axes; 900 and 50,000 pass neither the parser's
    # recursion limit nor ours: each is the same one-line input error, never a RecursionError.
    with pytest.raises(InputError, match="nested too deeply"):
        parse_json("[" * depth + "0" + "]" * depth, "--logits")


def test_a_long_invalid_json_is_quoted_short() -> None:
    spec = "[[" + ",".join(["3"] * 5000) + "]"  # one bracket short: invalid, 10 kB long
    with pytest.raises(InputError) as info:
        parse_json(spec, "--logits")
    assert len(str(info.value)) < 250 and "..." in str(info.value)


def test_inline_json_longer_than_a_file_name_is_never_taken_for_a_path(monkeypatch) -> None:
    # 60 classes of JSON pass 255 bytes, the longest file name: the file system is not asked.
    spec = "[[" + ", ".join(f"{v:.3f}" for v in np.linspace(-1, 1, 60)) + "]]"
    assert len(spec) > 255

    def no_stat(path: object) -> bool:
        raise AssertionError(f"asked the file system about {path!r}")

    monkeypatch.setattr("os.path.lexists", no_stat)
    assert file_or_json(spec, "--logits").shape == (1, 60)
