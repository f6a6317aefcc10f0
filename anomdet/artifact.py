"""Checksums of saved models: a manifest of every file's digest, and its verification.

A model artifact is a folder (weights, tokenizer, config, anomdet's metadata). At save
time every file's SHA-256 goes into `manifest.json`; the SHA-256 of that manifest is
the artifact's digest, stored in `anomdet_model_versions.weights_sha256`. One digest
thus covers every file: editing the weights, the tokenizer or the metadata, adding a
file or removing one, each makes the artifact refuse to load.

Saving and loading a model live here too, beside the checks they run. Torch and
transformers are imported only inside them: `anomdet rollback` verifies an artifact
without a model, and light commands must stay light.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomdet.lexical import LexicalEvidence

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
#: The metadata saved beside a model's weights: threshold, metrics, training data profile.
META_FILE = "anomdet.json"
#: The weights, in safetensors: the only format anomdet loads.
WEIGHTS_FILE = "model.safetensors"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                  if p.is_file() and p.name != MANIFEST_FILE)


def write_manifest(directory: Path) -> str:
    """Record every file's SHA-256 in the manifest; return the manifest's own digest."""
    directory = Path(directory)
    manifest = {name: sha256_file(directory / name) for name in _files(directory)}
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps({"sha256": manifest}, indent=2, sort_keys=True) + "\n")
    return sha256_file(path)


def _kind(name: str) -> str:
    return "weights" if name.endswith(".safetensors") else "file"


def _check_files(directory: Path, manifest: dict[str, str]) -> None:
    present = set(_files(directory))
    if missing := sorted(set(manifest) - present):
        raise ValueError(f"model artifact at {directory} is incomplete: {', '.join(missing)} "
                         "missing; roll back to another version or retrain")
    if extra := sorted(present - set(manifest)):
        raise ValueError(f"model artifact at {directory} holds files it was not saved with: "
                         f"{', '.join(extra)}; remove them or retrain")
    for name, wanted in sorted(manifest.items()):
        actual = sha256_file(directory / name)
        if actual != wanted:
            raise ValueError(
                f"model artifact at {directory} is corrupted: {_kind(name)} checksum of {name} "
                f"{actual[:12]}... does not match its manifest ({wanted[:12]}...)")


def _read_manifest(directory: Path) -> dict[str, str]:
    try:
        manifest = json.loads((directory / MANIFEST_FILE).read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"model artifact at {directory}: unreadable {MANIFEST_FILE} "
                         f"({exc}); roll back to another version or retrain") from exc
    if not isinstance(manifest, dict):
        raise ValueError(f"model artifact at {directory}: {MANIFEST_FILE} lists no files")
    return manifest


class ArtifactMissing(ValueError):
    """The artifact's folder is gone: lost, not altered. A retrain may replace a champion
    whose files are gone (see flows.retrain); an altered artifact is refused everywhere."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        super().__init__(
            f"model artifact folder {directory} is missing; restore it from a backup, roll "
            "back to a retired version, or run `anomdet retrain`, which replaces a champion "
            "whose files are gone")


def verify_artifact(directory: Path, expected_sha256: str | None) -> str:
    """Check every file of an artifact against its manifest and the manifest against
    `expected_sha256` (the database's digest); return the digest. Raises ValueError
    naming the folder and the file that differs."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactMissing(directory)
    if not (directory / MANIFEST_FILE).is_file():
        raise ValueError(f"model artifact at {directory} has no {MANIFEST_FILE}; roll back to "
                         "another version or retrain")
    digest = sha256_file(directory / MANIFEST_FILE)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ValueError(
            f"model artifact at {directory} is corrupted: its manifest checksum "
            f"{digest[:12]}... does not match the database ({expected_sha256[:12]}...)")
    _check_files(directory, _read_manifest(directory))
    return digest


def check_writable(root: Path) -> None:
    """Refuse an artifacts folder that cannot take a file, before any training starts."""
    import tempfile

    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ValueError(f"the artifacts folder {root} is not writable ({exc.strerror or exc}); "
                         "set ANOMDET_ARTIFACTS_DIR to a folder this user can write") from exc


def data_docs_dir(root: Path, run_id: int) -> Path:
    """Where a retraining run's Great Expectations Data Docs go, under the artifacts folder."""
    return Path(root) / "validation" / f"run-{run_id}"


def _megabytes(size: int) -> str:
    return f"{size / 2**20:,.1f} MB"


def free_bytes(folder: Path) -> int:
    """Free space on the file system of `folder` (or of its nearest existing parent)."""
    folder = Path(folder).resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


class DiskFull(ValueError):
    """No room in a folder for what a run writes there: says where, how much is needed
    and how much is free."""

    def __init__(self, folder: Path, needed: int, what: str, done: str = "") -> None:
        self.folder, self.needed = Path(folder), needed
        super().__init__(
            f"no space for {what} in {folder}: it needs about {_megabytes(needed)}, and "
            f"{_megabytes(free_bytes(folder))} is free{done}; free space there or set "
            "ANOMDET_ARTIFACTS_DIR to a folder with room, then run again")


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc`, or what caused it, is a full disk or quota. safetensors raises its
    own error type, with the words of the operating system's error."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(words in str(seen) for words in ("No space left on device", "StorageFull",
                                                "Disk quota exceeded")):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# Files of a saved model that a fine-tuned copy of it writes again: weights, tokenizer,
# configuration. Other formats a hub folder may also ship (ONNX, OpenVINO) are not.
_MODEL_SUFFIXES = (".safetensors", ".json", ".txt", ".model")


def model_bytes(directory: Path) -> int | None:
    """About how many bytes a model fine-tuned from the one in `directory` takes when
    saved, or None when `directory` holds no weights to judge by."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    files = [p for p in directory.rglob("*") if p.is_file()]
    if not any(p.suffix == ".safetensors" for p in files):
        return None
    return sum(p.stat().st_size for p in files if p.suffix in _MODEL_SUFFIXES)


def check_free_space(root: Path, needed: int, what: str) -> None:
    """Refuse a run whose files would not fit in the artifacts folder, before training."""
    if free_bytes(root) < needed:
        raise DiskFull(root, needed, what)


def save_artifact(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path,
    meta: dict[str, Any], lexical: LexicalEvidence | None = None,
) -> str:
    """Write weights (safetensors), tokenizer, the n-gram model and blend where the model
    has them (`anomdet.lexical`), and metadata to `directory`, atomically.

    Everything is written to a temporary sibling folder, then renamed into place,
    so a reader never sees half an artifact. Returns the artifact's digest: the
    SHA-256 of its manifest, which holds every file's SHA-256 (see `write_manifest`).
    """
    from transformers.utils import logging as hf_logging

    from anomdet.encoder import ID2LABEL, LABEL2ID

    directory = Path(directory)
    if directory.exists():
        raise ValueError(f"artifact directory {directory} exists already; refusing to overwrite")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".tmp-{directory.name}-{uuid.uuid4().hex[:8]}"
    hf_logging.disable_progress_bar()
    try:
        cpu_model = copy.deepcopy(model).to("cpu")
        cpu_model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if lexical is not None:
            lexical.save(tmp)
        checksum = sha256_file(tmp / WEIGHTS_FILE)
        full_meta = {**meta, "weights_sha256": checksum, "id2label": ID2LABEL,
                     "label2id": LABEL2ID}
        (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2, default=str))
        checksum = write_manifest(tmp)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return checksum


@dataclass
class LoadedModel:
    """A saved model ready to score: weights, tokenizer and the metadata saved with them."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    meta: dict[str, Any]
    # The n-gram model and blend its scores include (None: the encoder alone).
    lexical: LexicalEvidence | None = None

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    @property
    def max_length(self) -> int:
        return int(self.meta.get("max_length", 128))

    @property
    def precision(self) -> str:
        return str(self.meta["precision"])


def recorded_scoring(threshold: float | None,
                     hyperparameters: dict[str, Any] | None) -> dict[str, Any]:
    """What a version scores with, as the database records it: threshold, max length
    and precision. These win over the artifact's own metadata when loading."""
    hyper = hyperparameters or {}
    recorded = {"threshold": threshold, "max_length": hyper.get("max_length"),
                "precision": hyper.get("inference_precision")}
    return {k: v for k, v in recorded.items() if v is not None}


def load_artifact(directory: Path, *, expected_sha256: str | None = None,
                  recorded: dict[str, Any] | None = None) -> LoadedModel:
    """Load a saved model after verifying every file's checksum (safetensors only).

    `expected_sha256` is the digest the database holds; `recorded` (see
    `recorded_scoring`) the threshold, max length and precision it holds, which
    override the metadata saved in the artifact.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # Importing the encoder registers the mean-pooled head, which the saved config names.
    import anomdet.encoder  # noqa: F401
    from anomdet.device import pick_device
    from anomdet.inference import PRECISIONS, for_inference

    directory = Path(directory)
    verify_artifact(directory, expected_sha256)
    meta_path = directory / META_FILE
    if not meta_path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise ValueError(f"model artifact at {directory} is missing {META_FILE} or {WEIGHTS_FILE}")
    try:
        meta = {**json.loads(meta_path.read_text()), **(recorded or {})}
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"model artifact at {directory}: unreadable {META_FILE}: {exc}") from exc
    if "precision" not in meta:
        raise ValueError(f"model artifact at {directory}: {META_FILE} records no precision "
                         f"(one of {PRECISIONS}); retrain")
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(directory, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        lexical = LexicalEvidence.load(directory)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"model artifact at {directory} cannot be loaded: {exc}") from exc
    loaded = LoadedModel(model=model.to(pick_device()).eval(), tokenizer=tokenizer, meta=meta,
                         lexical=lexical)
    try:
        # The model scores in the precision it was evaluated and thresholded in.
        loaded.model = for_inference(loaded.model, loaded.precision)
    except ValueError as exc:
        raise ValueError(f"model artifact at {directory}: {exc}") from exc
    return loaded
