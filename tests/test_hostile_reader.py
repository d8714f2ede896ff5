"""Hostile and broken inputs through the command line, for `check FILE` and `compare --logits`:
each is refused with exit code 2 and one line on stderr, no traceback, nothing written.

The corpus is built at test time by tests/hostile.py. Fortran-ordered files are audited, with
results identical to the C-ordered file's.
"""

from __future__ import annotations

import io
import json
import math
import signal
import tempfile
import time
import tracemalloc
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from hostile import (
    BAD_LABEL_DTYPES,
    LYING_NPY,
    compressed_with,
    deflate_broken_midway,
    encrypted,
    flipped,
    npy_bytes,
    npz_bytes,
    special_files,
    truncations,
)
from hostile import header as npy_header
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from xentaudit import io as reader
from xentaudit.check import CHUNK_ENTRIES, check_file
from xentaudit.cli import cli
from xentaudit.errors import InputError
from xentaudit.io import load_inputs

FAST = ("--impl", "tf_sparse_softmax_xent", "--mode", "eager")
TEN_LABELS = "[0, 1, 2, 3, 0, 1, 2, 3, 0, 1]"  # for the 10 rows of 4 classes of most files


def run(*args: str) -> Result:
    return CliRunner().invoke(
        cli, list(args), catch_exceptions=False, env={"TF_CPP_MIN_LOG_LEVEL": None}
    )


def refused(result: Result) -> str:
    """The one error line of a command that refused its input: exit 2, nothing on stdout."""
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xentaudit: error: "), lines
    return lines[0]


def refused_by_both(path: Path, labels: str | None = TEN_LABELS, *options: str) -> list[str]:
    """The error lines of `check` (given ``options``; its --output stays unwritten) and
    `compare` on ``path``."""
    with tempfile.TemporaryDirectory() as out:
        report = Path(out) / "report.json"
        given_labels = ("--labels", labels) if labels else ()
        check = refused(
            run("check", str(path), *given_labels, "--output", str(report), *FAST, *options)
        )
        assert list(Path(out).iterdir()) == []
    compare = refused(run("compare", "--logits", str(path), *given_labels, *FAST))
    return [check, compare]


@pytest.fixture(scope="module", autouse=True)
def _tensorflow_once() -> None:
    """Import TensorFlow before the timed property test (the CLI imports it once)."""
    from xentaudit.impls import load_tf

    load_tf()


@pytest.fixture
def no_hang() -> Iterator[None]:
    """Fail, rather than hang the run, if anything blocks (opening a FIFO would)."""

    def timeout(*_: object) -> None:
        raise TimeoutError("blocked for 20 s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def offset_of(data: bytes) -> int:
    """Where the data of a .npy file built by hostile.npy_bytes starts (its header's end)."""
    return data.index(b"\n") + 1


# A fragment each of these errors must have, computed from what the header claims.
EXPECTED = {
    "negative dimension": "invalid shape (-1, 10)",
    "petabytes claimed": (
        f"is truncated: expected {offset_of(LYING_NPY['petabytes claimed']) + 4 * 10**18} bytes"
    ),
    "product wraps to zero in int64": (
        f"expected {offset_of(LYING_NPY['product wraps to zero in int64']) + 4 * 2**64} bytes"
    ),
    "shape smaller than the data": "is longer than its header says",
    "shape larger than the data": "is truncated",
    "bool dimension": "invalid shape (True, 40)",
    "complex dtype": "has dtype '<c8', which xentaudit does not read",
    "object dtype": "never unpickles",
    "header is code": "not a Python literal",
    "bad magic": "not a readable .npy array",
    "bad version": "version 9.0",
    "header length past end of file": "expected at least 5010 bytes, found 11",
    "header length of 4 GiB": f"a header of {2**32 - 1} bytes",
}


@pytest.mark.parametrize("name", sorted(LYING_NPY))
def test_lying_headers_are_refused_before_anything_is_allocated(name: str, tmp_path) -> None:
    path = tmp_path / "x.npy"
    path.write_bytes(LYING_NPY[name])
    for line in refused_by_both(path):
        assert str(path) in line and EXPECTED.get(name, "") in line


def test_truncations_at_every_part_of_the_file(tmp_path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.arange(40, dtype=np.float32).reshape(10, 4))
    whole = path.read_bytes()
    for cut in truncations(whole):
        path.write_bytes(whole[:cut])
        check, _ = refused_by_both(path, TEN_LABELS)
        if cut >= offset_of(whole):  # the header is whole: the sizes are named
            assert f"is truncated: expected {len(whole)} bytes, found {cut}" in check
    archive = tmp_path / "x.npz"
    whole = npz_bytes(tmp_path, False, logits=np.zeros((10, 4)), labels=np.zeros(10, int))
    for cut in (0, 4, 30, 100, len(whole) // 2, len(whole) - 1):
        archive.write_bytes(whole[:cut])
        refused_by_both(archive, None)


def logits_and_labels(rows: int, classes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, classes)).astype(np.float32)
    return {"logits": x, "labels": rng.integers(0, classes, rows)}


BROKEN_MEMBERS = {  # name -> (compressed?, the corruption of the zip's bytes)
    "flipped byte early in the deflate stream": (True, lambda d: flipped(d, "logits.npy", 0.1)),
    "flipped byte mid deflate stream": (True, lambda d: flipped(d, "logits.npy", 0.5)),
    "flipped byte late in the deflate stream": (True, lambda d: flipped(d, "logits.npy", 0.95)),
    "flipped byte in the labels' stream": (True, lambda d: flipped(d, "labels.npy", 0.6)),
    # The last float's exponent: still a finite number, found only by the CRC at the last chunk.
    "bad CRC of a stored member": (False, lambda d: flipped(d, "logits.npy", 1.0, mask=0x10)),
    "encrypted logits": (True, lambda d: encrypted(d, "logits.npy")),
    "encrypted labels": (False, lambda d: encrypted(d, "labels.npy")),
    "imploded (method 6)": (True, lambda d: compressed_with(d, "logits.npy", 6)),
    "AES (method 99)": (False, lambda d: compressed_with(d, "labels.npy", 99)),
}


@pytest.mark.parametrize("name", sorted(BROKEN_MEMBERS))
def test_broken_zip_members_are_input_errors_wherever_found(name: str, tmp_path) -> None:
    compressed, corrupt = BROKEN_MEMBERS[name]
    path = tmp_path / "x.npz"
    path.write_bytes(corrupt(npz_bytes(tmp_path, compressed, **logits_and_labels(256, 16))))
    # Chunks of 16 rows, read in a background thread: a late error surfaces at a late chunk.
    check, compare = refused_by_both(path, None, "--chunk-rows", "16")
    if "CRC" in name:
        assert "x.npz[logits] is unreadable (Bad CRC-32" in check
    if "encrypted" in name:
        assert "is encrypted; save the arrays unencrypted" in check
    if "deflate" in name:
        assert "x.npz[logits] is unreadable (Bad CRC-32 for file 'logits.npy')" in check
    if "method" in name:
        assert "uses zip compression method" in check and "uses zip compression" in compare


def test_a_broken_deflate_stream_found_midway_is_an_input_error(tmp_path) -> None:
    path = tmp_path / "x.npz"
    x = logits_and_labels(256, 16)["logits"]
    with io.BytesIO() as npy:
        np.save(npy, x)
        path.write_bytes(deflate_broken_midway(npy.getvalue(), 0.6))
    chunks = []  # the chunks read before the error: it is found midway, in the reading thread
    with pytest.raises(InputError, match="invalid block type"):
        check_file(path, impls=["tf_softmax_xent"], modes=["eager"], chunk_rows=16,
                   progress=lambda done, total: chunks.append(done))  # fmt: skip
    assert 0 < len(chunks) < 16
    for line in refused_by_both(path, str([0] * 256), "--chunk-rows", "16"):
        assert "x.npz[logits] is unreadable (Error -3 while decompressing data: invalid" in line


def test_member_names_from_the_file_are_escaped_to_keep_one_line(tmp_path) -> None:
    path = tmp_path / "x.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil\nname.npy", b"")
    for line in refused_by_both(path, None):
        assert "has no array 'logits' (it has 'evil\\nname'); pass --logits-key" in line


def test_special_files_are_named_for_what_they_are_and_never_opened(tmp_path, no_hang) -> None:
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((10, 4), np.float32))
    for kind, path in special_files(tmp_path):
        for line in refused_by_both(path):
            assert f"{path} is {kind}, not a file; " in line
        check = refused(run("check", str(good), "--labels", str(path), *FAST))
        compare = refused(run("compare", "--logits", str(good), "--labels", str(path), *FAST))
        for line in (check, compare):
            assert f"--labels: {path} is {kind}, not a file" in line
    (tmp_path / "dangling.npy").symlink_to(tmp_path / "nowhere.npy")
    for line in refused_by_both(tmp_path / "dangling.npy"):
        assert f"dangling.npy is a dangling link (to {tmp_path / 'nowhere.npy'}), not a " in line


def audited(path: Path, **options: object) -> dict:
    """check's JSON document of ``path``, without the file names."""
    document = check_file(path, impls=["tf_softmax_xent"], modes=["eager"], **options).to_dict()
    return {key: value for key, value in document.items() if key not in ("path", "labels")}


def test_fortran_ordered_files_are_audited_as_the_c_ordered_ones(tmp_path) -> None:
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((16, 9)) * rng.choice([1, 30, 90], (16, 1))).astype(np.float32)
    weights = rng.random((16, 9))  # C-contiguous: its transpose is Fortran-ordered
    weights /= weights.sum(axis=0)
    for order in ("c", "f"):
        (tmp_path / order).mkdir()
    np.save(tmp_path / "f" / "x.npy", x.T)  # what np.save writes for a transposed array
    np.save(tmp_path / "c" / "x.npy", np.ascontiguousarray(x.T))
    np.save(tmp_path / "f" / "y.npy", weights.T)
    np.save(tmp_path / "c" / "y.npy", np.ascontiguousarray(weights.T))
    assert b"'fortran_order': True" in (tmp_path / "f" / "x.npy").read_bytes()
    c_ordered = audited(tmp_path / "c" / "x.npy", labels=tmp_path / "c" / "y.npy")
    assert c_ordered["rows"] == 9 and c_ordered["classes"] == 16
    for chunk_rows in (None, 2):
        fortran = audited(
            tmp_path / "f" / "x.npy", labels=tmp_path / "f" / "y.npy", chunk_rows=chunk_rows
        )
        assert fortran == c_ordered
    logits, labels = load_inputs(str(tmp_path / "f" / "x.npy"), str(tmp_path / "f" / "y.npy"))
    assert np.array_equal(logits, x.T) and np.array_equal(labels, weights.T)
    np.save(tmp_path / "f" / "big.npy", x.T.astype(">f4"))  # Fortran order and big-endian
    assert b"'descr': '>f4', 'fortran_order': True" in (tmp_path / "f" / "big.npy").read_bytes()
    assert audited(tmp_path / "f" / "big.npy", labels=tmp_path / "f" / "y.npy") == c_ordered
    cube = rng.standard_normal((3, 4, 5))  # leading axes flattened in C order, as for C files
    np.save(tmp_path / "f" / "cube.npy", np.asfortranarray(cube))
    np.save(tmp_path / "c" / "cube.npy", cube)
    assert audited(tmp_path / "f" / "cube.npy") == audited(tmp_path / "c" / "cube.npy")


@pytest.mark.usefixtures("rows_alone")
def test_2d_fortran_files_stream_through_tiles_in_files_and_zip_members(
    tmp_path, monkeypatch
) -> None:
    # Tiles of 4 x 4 numbers over a 13 x 10 array: partial tiles on both edges, several tiles
    # per row and per column; the result equals the C-ordered file's, for a .npy and a
    # compressed .npz member (read as a stream and copied before its transpose), in chunks of
    # 3 rows too (the implementation run on each row alone: rows_alone).
    monkeypatch.setattr(reader, "TRANSPOSE_TILE", 4)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((13, 10)) * 20).astype(np.float32)
    labels = rng.integers(0, 10, 13)
    np.save(tmp_path / "c.npy", x)
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    np.savez_compressed(tmp_path / "f.npz", logits=np.asfortranarray(x), labels=labels)
    np.save(tmp_path / "y.npy", labels)
    assert b"'fortran_order': True" in (tmp_path / "f.npy").read_bytes()
    c_ordered = audited(tmp_path / "c.npy", labels=tmp_path / "y.npy")
    for chunk_rows in (None, 3):
        fortran = audited(tmp_path / "f.npy", labels=tmp_path / "y.npy", chunk_rows=chunk_rows)
        assert json.dumps(fortran) == json.dumps(c_ordered)  # NaN as NaN
        npz = audited(tmp_path / "f.npz", chunk_rows=chunk_rows)
        assert json.dumps(npz) == json.dumps(c_ordered)
    source = reader.open_arrays(tmp_path / "f.npy", None, "logits", None)[0]
    assert np.array_equal(np.concatenate(list(source.chunks(5, 10))), x)


def test_large_fortran_files_rows_too_long_and_large_compare_inputs_name_the_limit(
    tmp_path,
) -> None:
    # Zeros compress well: each file below claims millions of numbers in a few kilobytes.
    fortran = tmp_path / "fortran.npz"  # 3 axes: only those are limited (2-D ones stream)
    np.savez_compressed(fortran, logits=np.zeros((2, 2, CHUNK_ENTRIES // 4 + 1), np.float16).T)
    for line in refused_by_both(fortran, "[0]"):
        assert f"is stored in Fortran order with 3 axes and holds {CHUNK_ENTRIES + 4}" in line
        assert f"such files of at most {CHUNK_ENTRIES} numbers are read" in line
    wide = tmp_path / "wide.npz"
    np.savez_compressed(wide, logits=np.zeros((1, CHUNK_ENTRIES + 1), np.float16))
    check, compare = refused_by_both(wide, "[0]")
    assert f"rows of {CHUNK_ENTRIES + 1} classes" in check and f"most {CHUNK_ENTRIES}" in check
    assert f"holds {CHUNK_ENTRIES + 1} numbers, more than the {CHUNK_ENTRIES}" in compare
    assert "`xentaudit check FILE`" in compare
    tall = tmp_path / "tall.npz"  # streams through check; too much for compare in one piece
    np.savez_compressed(tall, logits=np.zeros((3, CHUNK_ENTRIES // 2), np.float16))
    compare = refused(run("compare", "--logits", str(tall), "--labels", "[0, 0, 0]", *FAST))
    assert f"holds {3 * CHUNK_ENTRIES // 2} numbers" in compare
    check = refused(run("check", str(tall), "--labels", "[0, 0, 0]", "--chunk-rows", "3", *FAST))
    assert "--chunk-rows 3 makes chunks of more than" in check and "--chunk-rows 2 or less" in check


@pytest.mark.parametrize("name", sorted(BAD_LABEL_DTYPES))
def test_label_dtypes_are_checked_before_labels_are_read(name: str, tmp_path) -> None:
    logits = tmp_path / "x.npy"
    np.save(logits, np.zeros((10, 4), np.float32))
    labels = tmp_path / "y.npy"
    np.save(labels, BAD_LABEL_DTYPES[name]())
    for line in (
        refused(run("check", str(logits), "--labels", str(labels), *FAST)),
        refused(run("compare", "--logits", str(logits), "--labels", str(labels), *FAST)),
    ):
        assert f"{labels} has dtype" in line
    both = tmp_path / "xy.npz"
    np.savez(both, logits=np.zeros((10, 4), np.float32), labels=BAD_LABEL_DTYPES[name]())
    for line in refused_by_both(both, None):
        assert f"{both}[labels] has dtype" in line


# --- property: whatever the bytes, the reader ends fast in a verdict or one line --------------

FLOATS = ["<f4", ">f4", "<f8", ">f8", "<f2", ">f2", "|V2"]  # "|V2": bfloat16 as ml_dtypes saves it
OTHERS = ["<i8", ">i4", "|u1", "|b1", "<c8", "|O", "|S2"]
# Half of each draw is what np.save could have written; the other half lies or breaks it.
DTYPES = st.one_of(st.sampled_from(FLOATS), st.sampled_from(FLOATS + OTHERS))
SHAPES = st.one_of(
    st.lists(st.integers(1, 5), min_size=2, max_size=3),
    st.lists(st.one_of(st.integers(0, 5), st.sampled_from([-1, 2**31, 2**62, 10**12])), max_size=3),
)
VERSIONS = st.one_of(st.just((1, 0)), st.sampled_from([(1, 0), (2, 0), (3, 0), (4, 1)]))


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """``None`` (leave the file whole) half of the time, else a draw of ``strategy``."""
    return st.one_of(st.none(), strategy)


@st.composite
def hostile_inputs(draw: st.DrawFn) -> tuple[str, bytes, bytes | None]:
    """A file suffix, its bytes, and the bytes of a labels .npy that fits it (or None)."""
    descr, shape = draw(DTYPES), tuple(draw(SHAPES))
    count = math.prod(shape) if all(0 <= d <= 5 for d in shape) else draw(st.integers(0, 40))
    values = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(count) * 30
    kind = np.dtype(descr).kind
    raw = (values if kind in "fiub" else np.zeros(count)).astype(descr.replace("|V", "<f"))
    data = raw.tobytes()[: draw(maybe(st.integers(0, raw.nbytes)))]
    npy = npy_bytes(npy_header(shape, descr, draw(st.booleans())), data, draw(VERSIONS))
    labels = None
    if len(shape) > 1 and all(0 < d <= 5 for d in shape):
        labels = npy_bytes(npy_header(shape[:-1], "<i8"), bytes(8 * math.prod(shape[:-1])))
    container = draw(st.sampled_from(["npy", "stored", "deflated"]))
    if container == "npy":
        return ".npy", npy[: draw(maybe(st.integers(0, len(npy))))], labels
    method = zipfile.ZIP_STORED if container == "stored" else zipfile.ZIP_DEFLATED
    with tempfile.SpooledTemporaryFile() as buffer:
        with zipfile.ZipFile(buffer, "w", method) as archive:
            archive.writestr("logits.npy", npy)
        buffer.seek(0)
        zipped = buffer.read()
    corruption = draw(maybe(st.sampled_from(["flip", "encrypt", "method", "cut"])))
    if corruption == "flip":
        zipped = flipped(zipped, "logits.npy", draw(st.floats(0, 1)), draw(st.integers(1, 255)))
    elif corruption == "encrypt":
        zipped = encrypted(zipped, "logits.npy")
    elif corruption == "method":
        zipped = compressed_with(zipped, "logits.npy", draw(st.sampled_from([6, 9, 98, 99])))
    elif corruption == "cut":
        zipped = zipped[: draw(st.integers(0, len(zipped)))]
    return ".npz", zipped, labels


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=hostile_inputs(), command=st.sampled_from(["check", "compare"]))
def test_any_input_ends_fast_in_a_verdict_or_one_line(
    case: tuple[str, bytes, bytes | None], command: str
) -> None:
    suffix, data, labels = case
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"x{suffix}"
        path.write_bytes(data)
        given_labels: tuple[str, ...] = ()
        if labels is not None:
            (Path(folder) / "y.npy").write_bytes(labels)
            given_labels = ("--labels", str(Path(folder) / "y.npy"))
        start = time.monotonic()
        tracemalloc.start()  # numpy reports its buffers to tracemalloc
        try:
            if command == "check":
                result = run("check", str(path), *given_labels, *FAST)
            else:
                given_labels = given_labels or ("--labels", "[0]")
                result = run("compare", "--logits", str(path), *given_labels, *FAST)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        elapsed = time.monotonic() - start
    event(f"exit code {result.exit_code}")  # shown by --hypothesis-show-statistics
    assert result.exit_code in (0, 1, 2), result.stderr
    assert len(result.stderr.splitlines()) <= 1 and "Traceback" not in result.output
    assert elapsed < 10, elapsed  # at most 40 numbers are ever written: nothing takes long
    # Whatever a header claims, nothing is allocated for it: the largest buffer is a chunk of
    # the few numbers really there, far below 64 MiB (a lying header would ask for gigabytes).
    assert peak < 64 * 2**20, peak
