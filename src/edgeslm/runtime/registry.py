"""The bundles a server answers for, by name, and how one is swapped without dropping a request.

A swap builds and verifies the new Predictor completely, then replaces one dict entry. A request looks its model
up once and keeps that object until it answers, so requests in flight finish on the old model, new ones get the new
one, and none waits or fails. A bundle that fails verification is never swapped in: the old one keeps serving.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..bundle import MANIFEST
from ..errors import EdgeSLMError, ServeError
from .generate import Generator
from .predictor import Predictor

__all__ = ["Loaded", "Model", "ModelRegistry", "parse_bundle_arg"]

Model = Predictor | Generator  # a classifier or embedding bundle, or a text-generation one


@dataclass(frozen=True)
class Loaded:
    """One served bundle: the predictor, where it came from, and what identifies this version of it."""

    name: str
    path: Path
    predictor: Model
    version: str  # first 12 hex digits of the model file's sha256: changes whenever the model does
    loaded_at: float  # unix time
    stamp: tuple[int, int]  # (inode, mtime_ns) of manifest.json when loaded; `watch` compares it

    @property
    def task(self) -> str:
        return self.predictor.task


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = (path / MANIFEST).stat()
    except OSError:
        return (0, 0)
    return (st.st_ino, st.st_mtime_ns)


def parse_bundle_arg(arg: str) -> tuple[str, Path]:
    """``name=path`` or ``path``; an unnamed ``.../demo/bundle`` is served as ``demo`` (else the folder's name)."""
    name, sep, rest = arg.partition("=")
    if sep and name and "/" not in name:
        return name, Path(rest)
    path = Path(arg)
    resolved = path.resolve()
    return (resolved.parent.name if resolved.name == "bundle" else resolved.name) or "model", path


class ModelRegistry:
    """Name -> Loaded. ``load`` fails loudly (startup); ``reload`` keeps the old model on any failure."""

    def __init__(self, loader: Callable[[Path], Model]) -> None:
        self._loader = loader
        self._models: dict[str, Loaded] = {}
        self._lock = threading.Lock()  # one swap at a time; readers never take it

    def _build(self, name: str, path: Path) -> Loaded:
        stamp = _stamp(path)
        predictor = self._loader(path)
        version = predictor.manifest.files[predictor.manifest.model].sha256[:12]
        return Loaded(name, path, predictor, version, time.time(), stamp)

    def load(self, bundles: Sequence[tuple[str, Path]]) -> None:
        """Load every bundle before serving any; ServeError names the first that fails and why."""
        names = [n for n, _ in bundles]
        if not bundles:
            raise ServeError("no bundle to serve; pass at least one bundle folder (from `edgeslm build`)")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ServeError(f"two bundles are named `{dupes[0]}`; name them with NAME=PATH, e.g. sst2=out/sst2/bundle")
        for name, path in bundles:
            try:
                self._models[name] = self._build(name, path)
            except EdgeSLMError as e:
                raise ServeError(f"bundle `{name}` ({path}) refused, so the server does not start: {e}") from e

    def get(self, name: str) -> Loaded | None:
        return self._models.get(name)

    @property
    def default(self) -> Loaded:
        """The first bundle given: the one ``POST /`` answers with."""
        return next(iter(self._models.values()))

    def names(self) -> list[str]:
        return list(self._models)

    def all(self) -> list[Loaded]:
        return list(self._models.values())

    def reload(self, name: str, path: Path | None = None) -> Loaded:
        """Verify and load ``name`` again (from ``path`` if given), then swap it in; on failure raise, keep the old."""
        with self._lock:
            old = self._models.get(name)
            if old is None:
                raise ServeError(f"no bundle named `{name}` is served; served: {', '.join(self._models)}")
            new = self._build(name, path or old.path)
            self._models = {**self._models, name: new}  # one reference swap: readers see old or new, never half
            return new

    def changed(self) -> dict[str, tuple[int, int]]:
        """Name -> new stamp, for each bundle whose manifest.json was replaced on disk since it was loaded."""
        now = {m.name: _stamp(m.path) for m in self._models.values()}
        return {m.name: now[m.name] for m in self._models.values() if now[m.name] != m.stamp}
