"""The safetensors reader checks a file's header before it reads a byte of data (issue 18): hostile
headers get a CheckpointError naming the file and tensor, and whatever it accepts, it reads exactly
as the safetensors library does (the oracle, in a fuzz test over headers)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_shared.checkpoints import Checkpoint, SafetensorsFile
from llama_shared.errors import CheckpointError

# Two float32 tensors: "a" (2, 2) at bytes [0, 16) and "b" (4,) at [16, 32).
GOOD = {"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}}
DATA = np.arange(8, dtype=np.float32).tobytes()


def write(path, header, data: bytes = DATA, header_bytes: bytes | None = None, length: int | None = None) -> str:
    encoded = json.dumps(header).encode() if header_bytes is None else header_bytes
    path.write_bytes(struct.pack("<Q", len(encoded) if length is None else length) + encoded + data)
    return str(path)


def with_entry(name: str, **changes) -> dict:
    return {**GOOD, name: {**GOOD[name], **changes}}


BAD_HEADERS = {
    "negative offset": (with_entry("a", data_offsets=[-8, 8]), r"'a' has data_offsets \[-8, 8\]"),
    "overlapping spans": (with_entry("b", data_offsets=[8, 24]), r"'b'.*overlaps 'a'"),
    "span shorter than the shape": (with_entry("a", data_offsets=[0, 8]), r"'a' spans 8 bytes.*takes 16"),
    "span past the end": (with_entry("b", shape=[6], data_offsets=[16, 40]), "is truncated"),
    "gap between spans": (with_entry("b", shape=[2], data_offsets=[24, 32]), "'b'.*leaves a gap after 'a'"),
    "bytes past the last tensor": (with_entry("b", shape=[2], data_offsets=[16, 24]), "8 bytes past"),
    "end before begin": (with_entry("a", data_offsets=[16, 0]), r"0 <= begin <= end"),
    "three offsets": (with_entry("a", data_offsets=[0, 8, 16]), "data_offsets"),
    "unknown dtype": (with_entry("a", dtype="F12"), "'a' has dtype 'F12'"),
    "dtype not a string": (with_entry("a", dtype=7), "'a' has dtype 7"),
    "negative dimension": (with_entry("a", shape=[-2, -2]), "non-negative integers"),
    "fractional dimension": (with_entry("a", shape=[2.0, 2]), "non-negative integers"),
    "boolean dimension": (with_entry("a", shape=[True, 4]), "non-negative integers"),
    "shape not a list": (with_entry("a", shape="2x2"), "non-negative integers"),
    "entry not an object": ({**GOOD, "a": [0, 16]}, "'a' has header entry"),
    "missing data_offsets": ({**GOOD, "a": {"dtype": "F32", "shape": [2, 2]}}, "'a' has data_offsets None"),
    "header a list": ([1, 2], "header is a JSON list"),
    "header a number": (3, "header is a JSON int"),
    "metadata not strings": ({**GOOD, "__metadata__": {"format": 1}}, "__metadata__"),
    "shape product overflowing int64": (with_entry("a", shape=[2**40, 2**40]), "'a' spans 16 bytes"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_hostile_header_is_a_clear_error(tmp_path, case):
    header, message = BAD_HEADERS[case]
    with pytest.raises(CheckpointError, match=message) as error:
        SafetensorsFile(write(tmp_path / "model.safetensors", header))
    assert "model.safetensors" in str(error.value)


@pytest.mark.parametrize("header_bytes, length, message", [
    (b'{"a":', None, "header is not JSON"),
    (b"\xff\xfe{}", None, "header is not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, None, "header is not JSON"),
    (json.dumps(GOOD).encode(), 2**63, "exceeds the format's limit"),
    (json.dumps(GOOD).encode(), 10**6, "truncated or not a safetensors file"),
], ids=["cut JSON", "not UTF-8", "nested too deep", "absurd header length", "header length past the end"])
def test_header_that_is_not_json_or_does_not_fit(tmp_path, header_bytes, length, message):
    with pytest.raises(CheckpointError, match=message):
        SafetensorsFile(write(tmp_path / "model.safetensors", None, header_bytes=header_bytes, length=length))


def test_good_header_reads_the_data(tmp_path):
    file = SafetensorsFile(write(tmp_path / "model.safetensors", GOOD))
    np.testing.assert_array_equal(file.get("a"), np.arange(4, dtype=np.float32).reshape(2, 2))
    np.testing.assert_array_equal(file.read("b"), np.arange(4, 8, dtype=np.float32))


@pytest.mark.parametrize("weight_map, message", [
    ([], "'weight_map' must be a non-empty object"),
    ({}, "'weight_map' must be a non-empty object"),
    ({"a": 3}, "expected a .safetensors file name"),
    ({"a": "model.bin"}, "expected a .safetensors file name"),
    ({"a": "/etc/model.safetensors"}, "outside the checkpoint folder"),
    ({"a": "sub/../../model.safetensors"}, "outside the checkpoint folder"),
])
def test_hostile_index_is_a_clear_error(tmp_path, weight_map, message):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=message):
        Checkpoint(tmp_path)


# ------------------------------------------------------------------------------------------------
# Fuzz: against the safetensors library

DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                 st.text(max_size=4), st.lists(st.integers(-4, 40), max_size=3), st.builds(dict))


@st.composite
def headers(draw):
    """A valid header and data for a few tensors, then a few hostile edits of its fields and bytes."""
    header, offset = {}, 0
    for i in range(draw(st.integers(0, 3))):
        dtype = draw(st.sampled_from(sorted(DTYPES)))
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[dtype]).itemsize
        header[f"t{i}"] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    data = bytes(draw(st.binary(min_size=offset, max_size=offset)))
    for _ in range(draw(st.integers(0, 3))):
        if not header:
            break
        name = draw(st.sampled_from(sorted(header)))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", "entry", "offset", "begin-end"]))
        entry = header[name]
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        movable = isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
        if field == "entry":
            header[name] = draw(JUNK)
        elif field == "offset" and movable:
            entry["data_offsets"] = [o + draw(st.integers(-9, 9)) for o in offsets]
        elif field == "begin-end" and movable:
            offsets[draw(st.integers(0, 1))] += draw(st.integers(-9, 9))
        elif isinstance(entry, dict) and field in ("dtype", "shape", "data_offsets"):
            entry[field] = draw(st.one_of(JUNK, st.sampled_from(["F32", "I8", "BF16", "F64"])))
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.one_of(st.just({"format": "pt"}), JUNK))
    data = data[:len(data) - draw(st.integers(0, 2))] + b"\0" * draw(st.integers(0, 2))
    return header, data


@settings(max_examples=300)
@given(case=headers())
def test_fuzz_headers_load_as_the_safetensors_library_does_or_fail_cleanly(tmp_path_factory, case):
    header, data = case
    path = write(tmp_path_factory.mktemp("fuzz") / "model.safetensors", header, data)
    try:
        expected = safetensors.numpy.load_file(path)
    except Exception:  # noqa: BLE001 - the library refuses the file in its own words
        expected = None
    try:
        file = SafetensorsFile(path)
        loaded = {name: (file.get(name), file.read(name)) for name in file.keys()}
    except CheckpointError:
        loaded = None
    assert (loaded is None) == (expected is None)
    if loaded is not None:
        assert sorted(loaded) == sorted(expected)
        for name, (mapped, read) in loaded.items():
            for array in (mapped, read):
                assert array.dtype == expected[name].dtype and array.shape == expected[name].shape
                assert array.tobytes() == expected[name].tobytes()
