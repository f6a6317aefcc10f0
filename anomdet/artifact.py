"""Checksums of saved models: a manifest of every file's digest, and its verification.

A model artifact is a folder (weights, tokenizer, config, anomdet's metadata). At save
time every file's SHA-256 goes into `manifest.json`; the SHA-256 of that manifest is
the artifact's digest, stored in `anomdet_model_versions.weights_sha256`. One digest
thus covers every file: editing the weights, the tokenizer or the metadata, adding a
file or removing one, each makes the artifact refuse to load.

Artifacts saved before manifests existed have no manifest; their recorded digest is
that of the weights file alone, which is still checked (see `verify_artifact`).
Nothing here imports torch: `anomdet rollback` verifies an artifact without a model.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
#: The metadata saved beside a model's weights: threshold, metrics, training data profile.
META_FILE = "anomdet.json"
# Artifacts without a manifest recorded this file's digest alone.
LEGACY_DIGEST_FILE = "model.safetensors"


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
        return _verify_legacy(directory, expected_sha256)
    digest = sha256_file(directory / MANIFEST_FILE)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ValueError(
            f"model artifact at {directory} is corrupted: its manifest checksum "
            f"{digest[:12]}... does not match the database ({expected_sha256[:12]}...)")
    _check_files(directory, _read_manifest(directory))
    return digest


def _verify_legacy(directory: Path, expected_sha256: str | None) -> str:
    weights = directory / LEGACY_DIGEST_FILE
    if not weights.is_file():
        raise ValueError(f"model artifact at {directory} has neither {MANIFEST_FILE} nor "
                         f"{LEGACY_DIGEST_FILE}; roll back to another version or retrain")
    digest = sha256_file(weights)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ValueError(
            f"model artifact at {directory} is corrupted: weights checksum {digest[:12]}... "
            f"does not match the database ({expected_sha256[:12]}...)")
    logger.warning("model artifact at %s predates manifests: only its weights are verified; "
                   "its threshold, precision and length come from the database", directory)
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
