"""AttributeStore and the filter language (flatcoat._attributes).

Property tests compare every operation against pure-Python models: a list of
dicts for the store, a per-row evaluator for filters.
"""

import math

import numpy as np
import pytest

from flatcoat._attributes import TYPES, AttributeStore, mask_to_bits
from flatcoat._persist import IndexFormatError


ROWS = [
    {"year": 2020, "price": 1.5, "ok": True, "lang": "en", "tags": ["a", "b"]},
    None,
    {"year": 2023, "price": 2, "lang": "de", "tags": []},
    {"ok": False, "tags": ["b"]},
]


def store():
    return AttributeStore.parse(ROWS, len(ROWS))


# ----------------------------------------------------------------------------- mask_to_bits


@pytest.mark.parametrize("n", [0, 1, 7, 63, 64, 65, 200])
def test_mask_to_bits_matches_the_bit_rule(n):
    mask = np.random.default_rng(n).random(n) < 0.5
    bits = mask_to_bits(mask)
    assert bits.dtype == np.uint64 and bits.shape == ((n + 63) // 64,) and bits.flags.c_contiguous
    for p in range(n):
        assert bool((int(bits[p // 64]) >> (p % 64)) & 1) == mask[p]
    if n % 64:
        assert int(bits[-1]) >> (n % 64) == 0  # bits past n are 0


def test_mask_to_bits_refuses_other_input():
    with pytest.raises(TypeError, match="mask"):
        mask_to_bits(np.zeros(3, dtype=np.int8))
    with pytest.raises(TypeError, match="mask"):
        mask_to_bits([True, False])
    with pytest.raises(ValueError, match="mask"):
        mask_to_bits(np.zeros((2, 2), dtype=bool))


# ----------------------------------------------------------------------------- parse and rows


def test_parse_infers_types_in_first_seen_order():
    s = store()
    assert TYPES == ("int", "float", "bool", "keyword", "keywords")
    assert len(s) == 4
    assert s.schema == {"year": "int", "price": "float", "ok": "bool", "lang": "keyword", "tags": "keywords"}
    rows = s.rows([0, 1, 2, 3])
    assert rows == [
        {"year": 2020, "price": 1.5, "ok": True, "lang": "en", "tags": ["a", "b"]},
        {},
        {"year": 2023, "price": 2.0, "lang": "de", "tags": []},
        {"ok": False, "tags": ["b"]},
    ]
    assert type(rows[0]["year"]) is int and type(rows[2]["price"]) is float and type(rows[0]["ok"]) is bool
    assert s.nbytes > 0


def test_parse_dict_of_columns_and_numpy_columns():
    s = AttributeStore.parse({"year": np.array([1, 2, 3]), "x": [None, 0.5, 1], "lang": ["a", None, "a"]}, 3)
    assert s.schema == {"year": "int", "x": "float", "lang": "keyword"}
    assert s.rows([0, 1, 2]) == [{"year": 1, "lang": "a"}, {"year": 2, "x": 0.5}, {"year": 3, "x": 1.0, "lang": "a"}]


def test_parse_none_gives_rows_without_columns():
    s = AttributeStore.parse(None, 5)
    assert len(s) == 5 and s.schema == {} and s.rows([4]) == [{}]
    assert AttributeStore().schema == {} and len(AttributeStore()) == 0


def test_parse_honours_a_schema():
    s = AttributeStore.parse([{"price": 3}], 1, schema={"price": "float"})
    assert s.schema == {"price": "float"} and s.rows([0]) == [{"price": 3.0}]
    with pytest.raises(TypeError, match=r"attributes\[1\]: field 'year' holds int values, got float .*from the start"):
        AttributeStore.parse([{"year": 1}, {"year": 2.5}], 2, schema={"year": "int"})
    with pytest.raises(TypeError, match=r"attributes\[0\]: field 'lang' holds keyword values, got int"):
        AttributeStore.parse([{"lang": 3}], 1, schema={"lang": "keyword"})


@pytest.mark.parametrize(
    "attributes, n, exc, pattern",
    [
        ([{"a": 1}, {"a": "x"}], 2, TypeError, r"attributes\[1\]: field 'a': got keyword 'x', but row 0 gave it int"),
        ([{"a": True}, {"a": 1}], 2, TypeError, r"attributes\[1\]: field 'a'.* bool"),
        ([{"a": float("nan")}], 1, ValueError, r"attributes\[0\]: field 'a'.*not finite"),
        ([{"a": 2**63}], 1, ValueError, r"attributes\[0\]: field 'a'.*int64"),
        ([{"a": "\ud800"}], 1, ValueError, r"attributes\[0\]: field 'a'.*surrogate"),
        ([{"a": ["x", 1]}], 1, TypeError, r"attributes\[0\]: field 'a': element 1"),
        ([{"a": {"b": 1}}], 1, TypeError, r"attributes\[0\]: field 'a': unsupported value"),
        ([{"$a": 1}], 1, ValueError, r"attributes\[0\]: field name '\$a'"),
        ([{"": 1}], 1, ValueError, r"attributes\[0\]: field name ''"),
        ([{3: 1}], 1, TypeError, r"attributes\[0\]: field names are str"),
        ([3], 1, TypeError, r"attributes\[0\]: expected a dict"),
        ([{}, {}], 1, ValueError, r"attributes: expected 1 entries"),
        ("abc", 1, TypeError, r"attributes: expected a list"),
        ({"a": 3}, 1, TypeError, r"attributes\['a'\]: a dict of columns.*list of one dict"),
        ({"a": [1, 2]}, 1, ValueError, r"attributes\['a'\]: expected 1 values"),
        ({"a": np.array([np.inf])}, 1, ValueError, r"attributes\['a'\]\[0\]: field 'a'.*not finite"),
    ],
)
def test_parse_refuses_bad_attributes(attributes, n, exc, pattern):
    with pytest.raises(exc, match=pattern):
        AttributeStore.parse(attributes, n)


# ----------------------------------------------------------------------------- row operations


def test_append_take_move_truncate():
    s = store()
    s.append(AttributeStore.parse({"year": [1, None], "new": ["x", "y"], "price": [7, 8]}, 2))
    assert len(s) == 6
    assert s.schema == {"year": "int", "price": "float", "ok": "bool", "lang": "keyword", "tags": "keywords", "new": "keyword"}
    assert s.rows([3, 4, 5]) == [{"ok": False, "tags": ["b"]}, {"year": 1, "price": 7.0, "new": "x"}, {"price": 8.0, "new": "y"}]
    t = s.take(np.array([5, -1, 0]))
    assert t.rows([0, 1, 2]) == [{"price": 8.0, "new": "y"}, {}, s.rows([0])[0]]
    s.move(np.array([5, 4]), np.array([0, 1]))
    s.truncate(4)
    assert s.rows([0, 1, 2, 3]) == [
        {"price": 8.0, "new": "y"}, {"year": 1, "price": 7.0, "new": "x"},
        {"year": 2023, "price": 2.0, "lang": "de", "tags": []}, {"ok": False, "tags": ["b"]},
    ]


def test_append_type_conflict_changes_nothing():
    s = store()
    before = s.rows(range(len(s)))
    with pytest.raises(TypeError, match="field 'year' holds int values, got float"):
        s.append(AttributeStore.parse([{"new": 1, "year": 2.5}], 1))
    with pytest.raises(TypeError, match="field 'lang' holds keyword values, got keywords"):
        s.append(AttributeStore.parse([{"lang": ["x"]}], 1))
    assert len(s) == 4 and s.rows(range(4)) == before and "new" not in s.schema


# ----------------------------------------------------------------------------- filters


@pytest.mark.parametrize(
    "flt, expected",
    [
        ({}, [1, 1, 1, 1]),
        ({"year": 2020}, [1, 0, 0, 0]),
        ({"year": {"$gte": 2021}}, [0, 0, 1, 0]),
        ({"year": {"$gt": 2020.5, "$lt": 2024}}, [0, 0, 1, 0]),
        ({"year": {"$ne": 2020}}, [0, 1, 1, 1]),
        ({"year": {"$nin": [2020, 2023]}}, [0, 1, 0, 1]),
        ({"year": {"$in": [2023.0]}}, [0, 0, 1, 0]),
        ({"price": {"$lte": 2}}, [1, 0, 1, 0]),
        ({"ok": True}, [1, 0, 0, 0]),
        ({"ok": {"$ne": True}}, [0, 1, 1, 1]),
        ({"lang": {"$in": ["de", "fr"]}}, [0, 0, 1, 0]),
        ({"lang": "zz"}, [0, 0, 0, 0]),
        ({"tags": "b"}, [1, 0, 0, 1]),
        ({"tags": {"$ne": "a"}}, [0, 1, 1, 1]),
        ({"tags": {"$all": ["a", "b"]}}, [1, 0, 0, 0]),
        ({"tags": {"$size": 0}}, [0, 0, 1, 0]),
        ({"tags": {"$nin": ["a", "b"]}}, [0, 1, 1, 0]),
        ({"lang": {"$exists": False}}, [0, 1, 0, 1]),
        ({"missing_field": {"$exists": False}}, [1, 1, 1, 1]),
        ({"$or": [{"year": 2020}, {"ok": False}]}, [1, 0, 0, 1]),
        ({"$or": []}, [0, 0, 0, 0]),
        ({"$and": []}, [1, 1, 1, 1]),
        ({"$not": {"year": {"$gt": 2000}}}, [0, 1, 0, 1]),
        ({"$id": [11, 13, 99]}, [0, 1, 0, 1]),
        ({"$id": {"$nin": [10]}}, [0, 1, 1, 1]),
    ],
)
def test_evaluate_examples(flt, expected):
    ids = np.array([10, 11, 12, 13], dtype=np.int64)

    def id_rows(q):
        pos = np.searchsorted(ids, q)
        pos = np.minimum(pos, len(ids) - 1)
        return np.where(ids[pos] == q, pos, -1)

    assert store().evaluate(flt, id_rows).tolist() == [bool(e) for e in expected]


@pytest.mark.parametrize(
    "flt, exc, pattern",
    [
        ([], TypeError, r"^filter: expected a dict"),
        ({"year": {"$gte": "abc"}}, TypeError, r"^filter: field 'year': \$gte expects a number, got 'abc'"),
        ({"year": {"$gte": True}}, TypeError, r"field 'year': \$gte expects a number"),
        ({"lang": 3}, TypeError, r"field 'lang': \$eq expects a str, got 3"),
        ({"ok": 1.0}, TypeError, r"field 'ok': \$eq expects True or False"),
        ({"tags": ["a"]}, TypeError, r"field 'tags': \$eq expects a str.*\$all"),
        ({"year": {"$in": 2020}}, TypeError, r"field 'year': \$in expects a list"),
        ({"yeer": 1}, ValueError, r"unknown field 'yeer'; known fields: 'year', 'price'"),
        ({"yeer": {"$exists": True}}, ValueError, r"unknown field 'yeer'"),
        ({"year": {"$foo": 1}}, ValueError, r"field 'year': unknown operator '\$foo'.*\$gte"),
        ({"lang": {"$gt": "a"}}, ValueError, r"field 'lang': \$gt is not defined for keyword fields"),
        ({"year": {"$all": [1]}}, ValueError, r"field 'year': \$all is not defined for int fields"),
        ({"$foo": []}, ValueError, r"unknown operator '\$foo'"),
        ({"$gte": 3}, ValueError, r"\$gte is a field operator"),
        ({"$or": {"year": 1}}, TypeError, r"\$or expects a list"),
        ({"$or": [{"year": "x"}]}, TypeError, r"^filter\['\$or'\]\[0\]: field 'year': \$eq expects a number"),
        ({"$not": [1]}, TypeError, r"filter\['\$not'\]: expected a dict"),
        ({"year": {}}, ValueError, r"field 'year': empty operator dict"),
        ({"year": {"gte": 1}}, ValueError, r"field 'year': 'gte' is not an operator"),
        ({"year": {"$exists": 1}}, TypeError, r"field 'year': \$exists expects True or False"),
        ({"tags": {"$size": -1}}, ValueError, r"field 'tags': \$size expects a non-negative int"),
        ({"year": {"$eq": float("nan")}}, ValueError, r"field 'year': \$eq expects a number, got NaN"),
        ({"$id": ["a"]}, TypeError, r"\$id expects integer ids"),
        ({"$id": {"$gt": 1}}, ValueError, r"\$id: unknown operator"),
        ({1: 2}, TypeError, r"keys are field names or operators"),
    ],
)
def test_evaluate_refuses_malformed_filters(flt, exc, pattern):
    with pytest.raises(exc, match=pattern):
        store().evaluate(flt, lambda ids: np.full(len(ids), -1, dtype=np.int64))


def test_id_without_id_rows_is_a_value_error():
    with pytest.raises(ValueError, match=r"\$id"):
        store().evaluate({"$id": [1]})


# ----------------------------------------------------------------------------- persistence


def test_to_arrays_round_trip_through_read_only_memory_maps(tmp_path):
    s = store()
    meta, arrays = s.to_arrays()
    assert all(name.isidentifier() and name.startswith("attr_") for name in arrays)
    import json

    meta = json.loads(json.dumps(meta))
    for name, arr in arrays.items():
        np.save(tmp_path / f"{name}.npy", arr)
    loaded = {name: np.load(tmp_path / f"{name}.npy", mmap_mode="r") for name in arrays}
    r = AttributeStore.from_arrays(meta, loaded, len(s))
    assert r.schema == s.schema and r.rows(range(4)) == s.rows(range(4))
    assert r.evaluate({"tags": "b"}).tolist() == s.evaluate({"tags": "b"}).tolist()
    r.move(np.array([0]), np.array([3]))
    r.append(store())
    assert r.rows([3, 4]) == [s.rows([0])[0], s.rows([0])[0]]
    assert np.load(tmp_path / "attr_0_values.npy").tolist() == arrays["attr_0_values"].tolist()  # files untouched


def test_from_arrays_refuses_inconsistent_arrays():
    meta, arrays = store().to_arrays()
    bad = dict(arrays, attr_3_codes=np.array([0, 5, -1, -1], dtype=np.int32))
    with pytest.raises(IndexFormatError, match="attr_3_codes.npy"):
        AttributeStore.from_arrays(meta, bad, 4)
    with pytest.raises(IndexFormatError, match="attr_0_values.npy"):
        AttributeStore.from_arrays(meta, dict(arrays, attr_0_values=arrays["attr_0_values"][:3]), 4)
    with pytest.raises(IndexFormatError):
        AttributeStore.from_arrays(meta, arrays, 5)
