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


# ============================================================================= property tests
#
# The model: a list of dicts (one per row, the present fields only) and a per-row Python evaluator of
# the filter language. Python compares ints and floats exactly, which is what the store promises.

import json  # noqa: E402

from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
I64 = (-(2**63), 2**63 - 1)
WORDS = ["a", "b", "c", "d", "é", "", "a b"]
FIELDS = ["f0", "f1", "f2", "f3", "f4", "f5"]

ints = st.one_of(st.integers(-4, 4), st.integers(*I64), st.sampled_from([I64[0], I64[1], 2**53 + 1]))
floats = st.one_of(
    st.sampled_from([-1.5, -0.0, 0.0, 0.5, 2.0, 3.0, 1e300, 2.0**53]),
    st.floats(allow_nan=False, allow_infinity=False),
)
words = st.sampled_from(WORDS)
VALUES = {
    "int": ints,
    "float": floats,
    "bool": st.booleans(),
    "keyword": words,
    "keywords": st.lists(words, max_size=4) | st.lists(words, max_size=3).map(tuple),
}
schemas = st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(TYPES), min_size=1, max_size=5)


@st.composite
def rows_for(draw, schema, min_size=0, max_size=12, int_in_float=True):
    """A list of rows (dicts or None) over ``schema``; float fields may receive ints."""
    out = []
    for _ in range(draw(st.integers(min_size, max_size))):
        if draw(st.integers(0, 5)) == 0:
            out.append(None)
            continue
        row = {}
        for field, kind in schema.items():
            choice = draw(st.integers(0, 3))
            if choice == 0:
                continue  # absent
            if choice == 1:
                row[field] = None
            elif kind == "float" and int_in_float and draw(st.booleans()):
                row[field] = draw(st.integers(-4, 4) | st.just(2**53 + 1))
            else:
                row[field] = draw(VALUES[kind])
        out.append(row)
    return out


def normalise(row, schema):
    """The model's view of a row: present fields in schema order, floats as float, lists as list."""
    out = {}
    for field, kind in schema.items():
        value = None if row is None else row.get(field)
        if value is None:
            continue
        out[field] = float(value) if kind == "float" else list(value) if kind == "keywords" else value
    return out


def inferred_schema(rows, declared=None):
    seen = {}
    for row in rows:
        for field, value in (row or {}).items():
            if value is None:
                continue
            kind = ("bool" if isinstance(value, bool) else "int" if isinstance(value, int) else
                    "float" if isinstance(value, float) else "keyword" if isinstance(value, str) else "keywords")
            if declared and field in declared:
                kind = declared[field]
            elif seen.get(field) == "float" and kind == "int" or seen.get(field) == "int" and kind == "float":
                kind = "float"
            seen[field] = kind
    return seen


def same_rows(got, expected):
    """Equal as values and as types (1 and 1.0 differ, [] and () differ)."""
    def typed(v):
        return (type(v).__name__, [typed(x) for x in v] if isinstance(v, list) else repr(v))
    assert [[(k, typed(v)) for k, v in row.items()] for row in got] == \
           [[(k, typed(v)) for k, v in row.items()] for row in expected]


def reference(row, flt, schema, row_id):
    """The filter language, one row at a time, in plain Python."""
    for key, value in flt.items():
        if key == "$and":
            ok = all(reference(row, f, schema, row_id) for f in value)
        elif key == "$or":
            ok = any(reference(row, f, schema, row_id) for f in value)
        elif key == "$not":
            ok = not reference(row, value, schema, row_id)
        elif key == "$id":
            if isinstance(value, dict):
                ok = all((row_id in v) == (op == "$in") for op, v in value.items())
            else:
                ok = row_id in value
        else:
            ops = value if isinstance(value, dict) else {"$eq": value}
            ok = all(field_reference(row.get(key), op, operand, schema.get(key)) for op, operand in ops.items())
        if not ok:
            return False
    return True


def field_reference(val, op, operand, kind):
    listy = kind == "keywords"
    if op == "$exists":
        return (val is not None) == operand
    if op == "$ne":
        return not field_reference(val, "$eq", operand, kind)
    if op == "$nin":
        return not field_reference(val, "$in", operand, kind)
    if val is None:
        return False
    if op == "$eq":
        return operand in val if listy else val == operand
    if op == "$in":
        return any(x in val for x in operand) if listy else any(val == x for x in operand)
    if op == "$all":
        return all(x in val for x in operand)
    if op == "$size":
        return len(val) == operand
    return {"$gt": val > operand, "$gte": val >= operand, "$lt": val < operand, "$lte": val <= operand}[op]


NUMBERS = st.one_of(
    st.integers(-5, 5),
    st.floats(-5, 5, allow_nan=False).map(lambda x: round(x * 2) / 2 + draw_offset(x)),
    st.sampled_from([math.inf, -math.inf, 2**53 + 1, 2.0**53, I64[0], I64[1], I64[1] + 1, I64[0] - 1, 10**400, -(2**70)]),
    st.floats(allow_nan=False),
    st.integers(*I64),
)


def draw_offset(x):
    return 0.25 if int(abs(x) * 8) % 2 else 0.0  # some half-integers, some quarter offsets


def operand_strategy(kind, op):
    if op == "$exists":
        return st.booleans()
    if op == "$size":
        return st.integers(0, 4)
    scalar = {"int": NUMBERS, "float": NUMBERS, "bool": st.booleans(), "keyword": words, "keywords": words}[kind]
    if op in ("$in", "$nin", "$all"):
        return st.lists(scalar, max_size=4)
    return scalar


@st.composite
def field_filters(draw, schema):
    field = draw(st.sampled_from(sorted(schema)))
    kind = schema[field]
    ops = draw(st.lists(st.sampled_from(FIELD_OPS[kind]), min_size=1, max_size=3, unique=True))
    spec = {op: draw(operand_strategy(kind, op)) for op in ops}
    if list(spec) == ["$eq"] and draw(st.booleans()):
        return {field: spec["$eq"]}  # the shorthand
    return {field: spec}


from flatcoat._attributes import FIELD_OPERATORS as FIELD_OPS  # noqa: E402


def filters(schema, n_ids):
    leaves = [field_filters(schema)] if schema else []
    leaves.append(st.just({"absent_field": {"$exists": False}}))
    ids = st.lists(st.integers(-2, n_ids * 3 + 2), max_size=5)
    leaves.append(ids.map(lambda v: {"$id": v}))
    leaves.append(st.tuples(st.sampled_from(["$in", "$nin"]), ids).map(lambda t: {"$id": {t[0]: t[1]}}))
    leaf = st.one_of(leaves)

    def extend(children):
        return st.one_of(
            st.lists(children, max_size=3).map(lambda fs: {"$and": fs}),
            st.lists(children, max_size=3).map(lambda fs: {"$or": fs}),
            children.map(lambda f: {"$not": f}),
            st.lists(children, min_size=2, max_size=3).map(merge_dicts),
        )
    return st.recursive(leaf, extend, max_leaves=8)


def merge_dicts(fs):
    out = {}
    for f in fs:
        for k, v in f.items():
            out.setdefault(k, v)
    return out


def id_resolver(n):
    """Row p has id 3p + 1."""
    def id_rows(ids):
        ids = np.asarray(ids, dtype=np.int64)
        pos = (ids - 1) // 3
        ok = ((ids - 1) % 3 == 0) & (pos >= 0) & (pos < n)
        return np.where(ok, pos, -1)
    return id_rows


@PROPS
@given(st.data())
def test_evaluate_matches_the_reference(data):
    declared = data.draw(schemas)
    rows = data.draw(rows_for(declared))
    use_schema = data.draw(st.booleans())
    store = AttributeStore.parse(rows, len(rows), schema=declared if use_schema else None)
    schema = inferred_schema(rows, declared if use_schema else None)
    assert store.schema == schema
    model = [normalise(r, schema) for r in rows]
    flt = data.draw(filters(schema, len(rows)))
    got = store.evaluate(flt, id_resolver(len(rows)))
    expected = [reference(m, flt, schema, 3 * i + 1) for i, m in enumerate(model)]
    assert got.dtype == np.bool_ and got.shape == (len(rows),)
    assert got.tolist() == expected, flt


@PROPS
@given(st.data())
def test_parse_columns_and_rows_round_trip(data):
    declared = data.draw(schemas)
    rows = data.draw(rows_for(declared))
    n = len(rows)
    as_columns = data.draw(st.booleans())
    if as_columns:
        columns = {f: [None if r is None else r.get(f) for r in rows] for f in declared}
        store = AttributeStore.parse(columns, n, schema=declared)
    else:
        store = AttributeStore.parse(rows, n, schema=declared)
    schema = inferred_schema(rows, declared)
    if as_columns:  # a dict of columns lists every field in its own order
        schema = {f: schema[f] for f in declared if f in schema}
    assert store.schema == schema and len(store) == n
    same_rows(store.rows(np.arange(n)), [normalise(r, schema) for r in rows])
    positions = data.draw(st.lists(st.integers(0, n - 1), max_size=6)) if n else []
    same_rows(store.rows(positions), [normalise(rows[p], schema) for p in positions])


@PROPS
@given(st.data())
def test_row_operations_match_a_list_model(data):
    schema = data.draw(schemas)
    first = data.draw(rows_for(schema, int_in_float=False))
    store = AttributeStore.parse(first, len(first))
    model = [normalise(r, schema) for r in first]
    for _ in range(data.draw(st.integers(1, 8))):
        n = len(model)
        op = data.draw(st.sampled_from(["append", "take", "move", "truncate", "append_self"]))
        if op == "append":
            more = data.draw(rows_for(schema, int_in_float=False))
            store.append(AttributeStore.parse(more, len(more)))
            model += [normalise(r, schema) for r in more]
        elif op == "append_self":
            store.append(store)
            model += [dict(r) for r in model]
        elif op == "take":
            rows = data.draw(st.lists(st.integers(-1, n - 1), max_size=15)) if n else data.draw(st.lists(st.just(-1), max_size=3))
            store = store.take(np.array(rows, dtype=np.int64))
            model = [dict(model[r]) if r >= 0 else {} for r in rows]
        elif op == "move" and n:
            dst = data.draw(st.lists(st.integers(0, n - 1), max_size=n, unique=True))
            src = data.draw(st.lists(st.integers(0, n - 1), min_size=len(dst), max_size=len(dst)))
            store.move(np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64))
            before = [dict(r) for r in model]
            for s_, d_ in zip(src, dst):
                model[d_] = dict(before[s_])
        elif op == "truncate":
            keep = data.draw(st.integers(0, n))
            store.truncate(keep)
            model = model[:keep]
        assert len(store) == len(model)
        present = {f for r in model for f in r}
        assert present <= set(store.schema)
        expected_schema = {f: store.schema[f] for f in store.schema}
        same_rows(store.rows(np.arange(len(model))), [{f: r[f] for f in expected_schema if f in r} for r in model])
    # the filters still agree with the reference after the operations
    flt = data.draw(filters(store.schema, len(model)))
    expected = [reference(m, flt, store.schema, 3 * i + 1) for i, m in enumerate(model)]
    assert store.evaluate(flt, id_resolver(len(model))).tolist() == expected


@PROPS
@given(st.data())
def test_keywords_moves_compact_the_pool(data):
    """Many moves of long lists: the pool is compacted, the rows stay right."""
    n = data.draw(st.integers(1, 30))
    lists = [[WORDS[(i + j) % len(WORDS)] for j in range(i % 5)] for i in range(n)]
    store = AttributeStore.parse({"k": lists}, n)
    model = [list(x) for x in lists]
    for _ in range(data.draw(st.integers(1, 400))):
        s, d = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, n - 1))
        store.move(np.array([s]), np.array([d]))
        model[d] = list(model[s])
    col = store._columns["k"]
    assert col.pool.size - col.live <= col.live + n // 4 + 1024
    assert col.live == sum(len(x) for x in model)
    same_rows(store.rows(np.arange(n)), [{"k": x} for x in model])


def save_and_map(store, tmp_path):
    meta, arrays = store.to_arrays()
    assert all(name.isidentifier() and name.startswith("attr_") for name in arrays)
    meta = json.loads(json.dumps(meta))
    for name, arr in arrays.items():
        np.save(tmp_path / f"{name}.npy", arr)
    mapped = {name: np.load(tmp_path / f"{name}.npy", mmap_mode="r") for name in arrays}
    assert all(not a.flags.writeable for a in mapped.values())
    return meta, arrays, mapped


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.data())
def test_to_arrays_from_arrays_round_trip_then_change(tmp_path, data):
    schema = data.draw(schemas)
    rows = data.draw(rows_for(schema, int_in_float=False))
    store = AttributeStore.parse(rows, len(rows))
    if rows and data.draw(st.booleans()):  # leave garbage in the pools and vocabularies
        store.move(np.array([0]), np.array([len(rows) - 1]))
        store.truncate(len(rows) - 1)
    n = len(store)
    expected_rows = store.rows(np.arange(n))
    meta, arrays, mapped = save_and_map(store, tmp_path)
    loaded = AttributeStore.from_arrays(meta, mapped, n)
    assert loaded.schema == store.schema
    same_rows(loaded.rows(np.arange(n)), expected_rows)
    flt = data.draw(filters(store.schema, n))
    assert loaded.evaluate(flt, id_resolver(n)).tolist() == store.evaluate(flt, id_resolver(n)).tolist()
    # saved again untouched: the same arrays
    meta2, arrays2 = loaded.to_arrays()
    assert meta2 == meta and all(np.array_equal(arrays2[k], arrays[k]) for k in arrays)
    # a change copies on first write; the files keep what was saved
    model = [dict(r) for r in expected_rows]
    if n:
        loaded.move(np.array([n - 1]), np.array([0]))
        model[0] = dict(model[n - 1])
    more = data.draw(rows_for(schema, max_size=4, int_in_float=False))
    extra = AttributeStore.parse(more, len(more))
    ok_types = all(loaded.schema.get(f, k) == k for f, k in extra.schema.items())
    if ok_types:
        loaded.append(extra)
        model += extra.rows(np.arange(len(extra)))
    loaded.truncate(max(0, len(model) - 1))
    model = model[: max(0, len(model) - 1)]
    same_rows(loaded.rows(np.arange(len(model))), [{f: r[f] for f in loaded.schema if f in r} for r in model])
    for name, arr in arrays.items():
        assert np.array_equal(np.load(tmp_path / f"{name}.npy"), arr)


# ----------------------------------------------------------------------------- malformed filters

WRONG = {  # a value of another type for each field type, and what the message says is expected
    "int": (st.sampled_from(["abc", True, None, [1], b"1"]), "a number"),
    "float": (st.sampled_from(["1.5", False, {"x": 1}]), "a number"),
    "bool": (st.sampled_from([0, 1.0, "true", None]), "True or False"),
    "keyword": (st.sampled_from([3, 1.5, True, b"en"]), "a str"),
    "keywords": (st.sampled_from([3, 2.5, False, ["a"]]), "a str"),
}


@st.composite
def wrapped(draw, inner, schema):
    """``inner`` nested inside valid siblings: validation must reach it whatever surrounds it."""
    for _ in range(draw(st.integers(0, 3))):
        sibling = draw(field_filters(schema))
        how = draw(st.sampled_from(["$and", "$or", "$not", "dict"]))
        if how == "$not":
            inner = {"$not": inner}
        elif how == "dict":
            inner = merge_dicts([sibling, inner]) if not set(sibling) & set(inner) else {"$and": [sibling, inner]}
        else:
            pair = [sibling, inner] if draw(st.booleans()) else [inner, sibling]
            inner = {how: pair}
    return inner


def populated():
    rows = [{"n": 1, "x": 0.5, "b": True, "k": "a", "ks": ["a", "b"]}, {"n": 2, "ks": []}, None]
    return AttributeStore.parse(rows, 3)


@PROPS
@given(st.data())
def test_wrong_operand_types_are_type_errors_naming_field_and_operator(data):
    store = populated()
    field = data.draw(st.sampled_from(sorted(store.schema)))
    kind = store.schema[field]
    op = data.draw(st.sampled_from([o for o in FIELD_OPS[kind] if o not in ("$exists", "$size")]))
    wrong, expected = WRONG[kind]
    bad = data.draw(wrong)
    operand = [bad] if op in ("$in", "$nin", "$all") else bad
    calls = []
    flt = data.draw(wrapped({field: {op: operand}}, store.schema))
    with pytest.raises(TypeError) as info:
        store.evaluate(flt, lambda ids: calls.append(ids) or np.full(len(ids), -1, np.int64))
    message = str(info.value)
    assert message.startswith("filter") and f"field {field!r}: {op}" in message and expected in message
    assert not calls  # nothing evaluated before everything was validated


@PROPS
@given(st.data())
def test_wrong_operators_and_fields_are_value_errors(data):
    store = populated()
    field = data.draw(st.sampled_from(sorted(store.schema)))
    kind = store.schema[field]
    case = data.draw(st.sampled_from(["unknown_op", "wrong_type_op", "unknown_field", "logical"]))
    if case == "unknown_op":
        op = data.draw(st.sampled_from(["$foo", "$regex", "$eqq", "$contains"]))
        inner, pattern = {field: {op: 1}}, f"field {field!r}: unknown operator {op!r}"
    elif case == "wrong_type_op":
        op = data.draw(st.sampled_from([o for o in ("$gt", "$gte", "$lt", "$lte", "$all", "$size") if o not in FIELD_OPS[kind]]
                                       or ["$foo"]))
        inner, pattern = {field: {op: 1}}, f"field {field!r}: {op}"
    elif case == "unknown_field":
        op = data.draw(st.sampled_from(["$eq", "$exists"]))
        inner, pattern = {"nope": {op: True}}, "unknown field 'nope'; known fields: 'n', 'x', 'b', 'k', 'ks'"
    else:
        inner, pattern = {"$xor": []}, "unknown operator '$xor'"
    flt = data.draw(wrapped(inner, store.schema))
    with pytest.raises(ValueError) as info:
        store.evaluate(flt, lambda ids: np.full(len(ids), -1, np.int64))
    assert pattern in str(info.value) and str(info.value).startswith("filter")


@given(st.lists(st.booleans(), max_size=300))
def test_mask_to_bits_property(bits):
    mask = np.array(bits, dtype=bool)
    words = mask_to_bits(mask)
    expect = np.zeros(((len(bits) + 63) // 64) * 64, dtype=bool)
    expect[: len(bits)] = mask
    assert words.tolist() == [int(sum(1 << i for i in range(64) if expect[w * 64 + i])) for w in range(len(words))]


# Numbers at the edges: ints and floats that are close to each other (half-integers, 2**53 + 1, the
# int64 bounds, infinities), each operator alone, so every boundary case is drawn often.
EDGE_INTS = st.one_of(st.integers(-3, 3), st.sampled_from([2**53, 2**53 + 1, 2**53 - 1, I64[0], I64[1], I64[1] - 1]))
EDGE_FLOATS = st.one_of(
    st.integers(-6, 6).map(lambda k: k / 2),
    st.sampled_from([2.0**53, 2.0**53 + 2, 2.0**63, -(2.0**63), 1e300, -0.0, 5e-324]),
)
EDGE_OPERANDS = st.one_of(
    EDGE_INTS, EDGE_FLOATS, st.integers(-6, 6).map(lambda k: k / 2 + 0.25 * (k % 2)),
    st.sampled_from([math.inf, -math.inf, I64[1] + 1, I64[0] - 1, 10**400, -(10**400), 2**63 + 2**11]),
)


@settings(max_examples=600, deadline=None)
@example("float", [2.0**53, 2.0**53 + 2, None], 2**53 + 1, [2**53 + 1, 2**53 + 3])  # ints between floats
@example("float", [1e300, -1e300, 0.0], 10**400, [10**400, -(10**400)])  # ints beyond float64
@example("int", [1, 2, -2, -1, None], 1.5, [1.5, 2.0])  # non-integral floats against ints
@example("int", [-1, 0, 1], -0.5, [-0.5, -1.0])
@example("int", [I64[1], I64[0], 0], math.inf, [I64[1] + 1, I64[0] - 1, 2.0**63])  # past the int64 range
@example("int", [I64[1], I64[0], 0], -math.inf, [-math.inf, 2**63 + 2**11])
@example("int", [2**53 + 1, 2**53], 2.0**53, [2.0**53])  # an exact float against ints it would round to
@given(
    st.sampled_from(["int", "float"]),
    st.lists(st.none() | EDGE_INTS | EDGE_FLOATS, min_size=1, max_size=10),
    EDGE_OPERANDS,
    st.lists(EDGE_OPERANDS, max_size=3),
)
def test_numeric_comparisons_are_exact(kind, values, operand, operands):
    if kind == "int":
        values = [v if v is None or isinstance(v, int) else int(v) for v in values]
        values = [v if v is None or I64[0] <= v <= I64[1] else None for v in values]
    else:
        values = [v if v is None else float(v) for v in values]
    store = AttributeStore.parse({"x": values}, len(values), schema={"x": kind})
    if "x" not in store.schema:
        return  # every value missing: no column
    for op in ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"]:
        value = operands if op in ("$in", "$nin") else operand
        got = store.evaluate({"x": {op: value}}).tolist()
        assert got == [field_reference(v, op, value, kind) for v in values], (values, op, value)
