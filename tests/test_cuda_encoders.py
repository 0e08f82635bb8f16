"""Encoders on CUDA (flatcoat.cuda_encoders) and the provider checks where sessions are made (flatcoat._onnx).

The provider checks and the onnxruntime/onnxruntime-gpu trap detection are
pure functions of the names given: tested everywhere with fake metadata. The
IO-binding path needs onnxruntime-gpu, CuPy and a GPU, and skips with the
reason without them.
"""

import warnings

import numpy as np
import pytest

from flatcoat import _onnx as ox
from flatcoat import cuda_encoders as ce

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


# ---------------------------------------------------------------------- the trap, with fake metadata

@pytest.mark.parametrize("names", [
    ["onnxruntime", "onnxruntime-gpu"],
    ["onnxruntime_gpu", "ONNXRuntime", "numpy"],            # normalised as pip does (PEP 503)
    ["ort-nightly", "onnxruntime-gpu"],
    ["onnxruntime-openvino", "onnxruntime.gpu"],
])
def test_two_onnxruntime_wheels_with_a_gpu_one_are_the_trap(names):
    message = ox.onnxruntime_conflict(names)
    assert message is not None
    assert "silently hide" in message and ox.ONNXRUNTIME_FIX in message


@pytest.mark.parametrize("names", [[], ["numpy"], ["onnxruntime"], ["onnxruntime-gpu", "numpy"],
                                   ["onnxruntime", "onnxruntime-openvino"]])
def test_no_trap_without_two_wheels_one_of_them_gpu(names):
    assert ox.onnxruntime_conflict(names) is None


def test_distributions_are_read_from_importlib_metadata():
    found = ox.onnxruntime_distributions()
    assert all(n in ("onnxruntime", "onnxruntime-gpu", "ort-nightly", "ort-nightly-gpu", "onnxruntime-openvino",
                     "onnxruntime-directml", "onnxruntime-silicon", "onnxruntime-training") for n in found)
    assert "numpy" in ox.installed_distributions()


def test_cuda_missing_with_both_wheels_names_the_trap_and_the_fix():
    with pytest.raises(ValueError) as info:
        ox.check_providers([CUDA, CPU], [CPU], ["onnxruntime", "onnxruntime-gpu"])
    message = str(info.value)
    assert "installed together" in message and ox.ONNXRUNTIME_FIX in message


def test_cuda_missing_with_the_cpu_wheel_says_install_the_gpu_one():
    with pytest.raises(ValueError, match="Install the GPU wheel") as info:
        ox.check_providers([CUDA], [CPU], ["onnxruntime"])
    assert ox.ONNXRUNTIME_FIX in str(info.value)


def test_cuda_missing_with_only_the_gpu_wheel_points_at_the_cuda_libraries():
    with pytest.raises(ValueError, match="could not load CUDA"):
        ox.check_providers([(CUDA, {"device_id": 0})], [CPU], ["onnxruntime-gpu"])


def test_cuda_available_but_two_wheels_warns():
    with pytest.warns(ox.OnnxRuntimeConflictWarning, match="installed together"):
        out = ox.check_providers([CUDA, CPU], [CUDA, CPU], ["onnxruntime", "onnxruntime-gpu"])
    assert out == [CUDA, CPU]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ox.check_providers([CUDA, CPU], [CUDA, CPU], ["onnxruntime", "onnxruntime-gpu"], warn=False)
        ox.check_providers([CUDA, CPU], [CUDA, CPU], ["onnxruntime-gpu"])


def test_provider_lists_are_normalised_and_checked():
    assert ox.check_providers(None, [CPU]) == [CPU]
    assert ox.check_providers(CPU, [CPU]) == [CPU]
    assert ox.check_providers([(CUDA, {"device_id": 1}), CPU], [CUDA, CPU], []) == [(CUDA, {"device_id": 1}), CPU]
    with pytest.raises(TypeError, match="provider names"):
        ox.check_providers([3], [CPU])
    with pytest.raises(ValueError, match="'TensorrtExecutionProvider' is not available"):
        ox.check_providers(["TensorrtExecutionProvider"], [CPU], [])


def test_cuda_providers():
    assert ce.cuda_providers() == [(CUDA, {"device_id": 0}), CPU]
    assert ce.cuda_providers(2, arena_extend_strategy="kSameAsRequested")[0] == (
        CUDA, {"device_id": 2, "arena_extend_strategy": "kSameAsRequested"})
    with pytest.raises(ValueError, match="^device_id: must be at least 0"):
        ce.cuda_providers(-1)
    for bad in (True, "0", 1.0):
        with pytest.raises(TypeError, match="^device_id: expected an integer"):
            ce.cuda_providers(bad)


class _FakeSession:
    def __init__(self, providers, options):
        self._providers, self._options = providers, options

    def get_providers(self):
        return self._providers

    def get_provider_options(self):
        return self._options


def test_session_device():
    assert ox.session_device(_FakeSession([CPU], {CPU: {}})) == "cpu"
    assert ox.session_device(_FakeSession([CUDA, CPU], {CUDA: {"device_id": "1"}})) == "cuda:1"
    assert ox.session_device(_FakeSession([CUDA, CPU], {CUDA: {}})) == "cuda:0"


class _FakeOrtValue:
    def __init__(self, where="Cuda", kind="tensor(float)"):
        self._where, self._kind = where, kind

    def device_name(self):
        return self._where

    def data_type(self):
        return self._kind

    def data_ptr(self):
        return 0x7F0000001000

    def shape(self):
        return [2, 5, 8]


def test_device_array_interface_from_an_ortvalue():
    value = _FakeOrtValue()
    arr = ce.DeviceArray.from_ortvalue(value)
    iface = arr.__cuda_array_interface__
    assert iface["shape"] == (2, 5, 8) and iface["typestr"] == "<f4" and iface["data"] == (0x7F0000001000, False)
    assert arr.owner is value  # the OrtValue lives as long as the view
    with pytest.raises(ValueError, match="not on a CUDA device"):
        ce.DeviceArray.from_ortvalue(_FakeOrtValue("Cpu"))
    with pytest.raises(TypeError, match="unsupported"):
        ce.DeviceArray.from_ortvalue(_FakeOrtValue(kind="tensor(string)"))


def test_to_numpy_passes_numpy_through():
    a = np.arange(3)
    assert ce.to_numpy(a) is a
    assert ce.to_numpy([1, 2]).tolist() == [1, 2]


# ---------------------------------------------------------------------- IO binding on a GPU

def _cupy_reason():
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() == 0:
            return "no CUDA device"
    except Exception as exc:  # noqa: BLE001 - any failure means no usable GPU here
        return f"CuPy with a GPU is needed ({exc})"
    return None


def _cuda_encoder_reason():
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return f"onnxruntime is not installed ({exc})"
    if CUDA not in ort.get_available_providers():
        conflict = ox.onnxruntime_conflict()
        return f"onnxruntime has no CUDA provider ({conflict or 'install onnxruntime-gpu'})"
    return CUPY_REASON


CUPY_REASON = _cupy_reason()
ENCODER_REASON = _cuda_encoder_reason()
needs_cuda_encoder = pytest.mark.skipif(ENCODER_REASON is not None, reason=f"needs a GPU encoder: {ENCODER_REASON}")


@pytest.mark.gpu
@needs_cuda_encoder
@pytest.mark.parametrize("kind", ["dense", "multivector"])
def test_io_binding_keeps_embeddings_on_the_gpu_and_matches_the_host_path(kind):
    import cupy as cp

    import flatcoat

    enc = flatcoat.Encoder.from_pretrained("all-MiniLM-L6-v2", kind=kind, providers=ce.cuda_providers())
    assert enc.device == "cuda:0"
    texts = ["what is a csv file", "parse command line options in python", "a", "read a json document " * 20]
    host = enc.encode_queries(texts)
    device = ce.encode_on_device(enc, texts, "query")
    if kind == "dense":
        assert isinstance(device, cp.ndarray) and device.shape == host.shape
        np.testing.assert_allclose(cp.asnumpy(device), host, rtol=1e-4, atol=1e-5)
    else:
        tokens, lengths = device
        assert isinstance(tokens, cp.ndarray)
        assert lengths.tolist() == [len(h) for h in host]
        np.testing.assert_allclose(cp.asnumpy(tokens), np.concatenate(host), rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@needs_cuda_encoder
def test_gpu_encoder_into_a_gpu_maxsim_store_end_to_end():
    import cupy as cp

    import flatcoat
    from flatcoat import cuda, cuda_maxsim

    if not cuda.available():
        pytest.skip(f"needs flatcoat's CUDA extension: {cuda.unavailable_reason()}")
    enc = flatcoat.Encoder.from_pretrained("all-MiniLM-L6-v2", kind="multivector", providers=ce.cuda_providers())
    docs = ["csv: read and write CSV files", "argparse: command-line parsing", "json: encode and decode JSON"]
    index = flatcoat.MultiVectorIndex(enc.dim, storage="f16")
    index.add(enc.encode_documents(docs))
    store = cuda_maxsim.CudaMaxSimStore.from_index(index)
    scores, ids = store.search(ce.encode_on_device(enc, ["parse command line options"], "query"), k=1)
    assert isinstance(ids, cp.ndarray) and int(ids[0, 0]) == 1


@pytest.mark.gpu
@pytest.mark.skipif(CUPY_REASON is not None, reason=f"needs CuPy on a GPU: {CUPY_REASON}")
@pytest.mark.parametrize("pooling", ["cls", "mean", "last-token", "weighted-mean"])
def test_pooling_written_once_runs_on_cupy(pooling):
    import cupy as cp

    from flatcoat.encoders import l2_normalize, pool_tokens

    rng = np.random.default_rng(5)
    hidden = rng.standard_normal((4, 7, 16)).astype(np.float32)
    mask = (np.arange(7) < np.array([7, 3, 1, 5])[:, None]).astype(np.int64)
    host = l2_normalize(pool_tokens(hidden, mask, pooling))
    device = l2_normalize(pool_tokens(cp.asarray(hidden), cp.asarray(mask), pooling, cp), cp)
    assert isinstance(device, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(device), host, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@needs_cuda_encoder
def test_retriever_on_the_gpu_matches_the_cpu_one():
    import flatcoat
    from flatcoat import cuda

    if not cuda.available():
        pytest.skip(f"needs flatcoat's CUDA extension: {cuda.unavailable_reason()}")
    docs = [f"document {i}: " + " ".join(["csv", "json", "http", "gzip", "regex"][j % 5] for j in range(i % 7 + 1))
            for i in range(60)]
    queries = ["read a csv file", "http request", "compress with gzip"]
    hits = []
    for providers, device in ((None, "cpu"), (ce.cuda_providers(), "cuda:0")):
        enc = flatcoat.Encoder.from_pretrained("all-MiniLM-L6-v2", providers=providers)
        mv = flatcoat.Encoder.from_pretrained("all-MiniLM-L6-v2", kind="multivector", providers=providers)
        r = flatcoat.Retriever(enc, flatcoat.DenseIndex(enc.dim, storage="int8", device=device),
                               reranker=(mv, flatcoat.MultiVectorIndex(mv.dim, device=device)))
        r.add(docs)
        assert r.index.device == device and enc.device == device
        hits.append(r.search(queries, k=5, rerank=20))
    for cpu_row, gpu_row in zip(*hits):
        assert [h.id for h in gpu_row] == [h.id for h in cpu_row]
        np.testing.assert_allclose([h.score for h in gpu_row], [h.score for h in cpu_row], rtol=1e-3, atol=1e-3)
