"""The package's folders are its layers: a module imports only from its own layer or those below."""

import ast
from pathlib import Path

import pytest

import ppl_ecmh

PACKAGE = Path(ppl_ecmh.__file__).parent
# bottom to top, as docs/design.md (section 5) and the README's layout list them
LAYERS = ["errors", "validation", "parallel", "lm", "samplers", "engine", "numpyro", "registry", "runner", "analysis",
          "sandbox", "tasks", "evaluation", "cli"]


def imported_layers(source: str) -> set[str]:
    """The layers (first component below ppl_ecmh) that `source` imports from."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ppl_ecmh":
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("ppl_ecmh.")}
    return found


def violations(layer: str, source: str) -> list[str]:
    rank = LAYERS.index(layer)
    return sorted(other for other in imported_layers(source) if other not in LAYERS or LAYERS.index(other) > rank)


def test_every_module_imports_only_its_own_layer_or_those_below():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative == Path("__init__.py"):  # the public API gathers from every layer
            continue
        layer = relative.parts[0].removesuffix(".py")
        assert layer in LAYERS, f"{relative}: a module outside every layer; add its layer to LAYERS and the docs"
        if wrong := violations(layer, path.read_text()):
            found[str(relative)] = wrong
    assert found == {}


@pytest.mark.parametrize("layer, source, wrong", [
    ("samplers", "from ppl_ecmh.engine import Schedule", ["engine"]),
    ("lm", "import ppl_ecmh.registry", ["registry"]),
    ("engine", "from ppl_ecmh import runner", ["runner"]),
    ("engine", "from ppl_ecmh.samplers import mh\nfrom ppl_ecmh.lm import toy", []),
])
def test_the_scan_sees_each_form_of_import_upwards(layer, source, wrong):
    assert violations(layer, source) == wrong
