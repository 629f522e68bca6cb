"""The import boundaries of flexivit_jax/, read from the source with `ast` (imports inside
functions included), so a layer that reaches up fails here, not in an installed package.

A module may import its own layer and the layers before it in LAYERS, never a later one.
"""
from __future__ import annotations

import ast
import pathlib
from typing import List, Optional

import pytest

PACKAGE = "flexivit_jax"
ROOT = pathlib.Path(__file__).parent.parent / PACKAGE

# Low to high. Names are relative to flexivit_jax/; a package name covers its modules.
LAYERS = (
    ("base", ("errors", "tree", "paths", "xla_env")),
    ("models", ("models",)),
    ("data", ("data",)),
    ("checkpoints", ("checkpoints",)),
    ("outputs", ("outputs",)),
    ("evaluators", ("evaluators",)),
    ("training", ("training",)),
    # cli: exit statuses, flags and progress for the commands; the analyses' main() use it,
    # so it sits with them, above every library layer that must not depend on a command.
    ("analysis", ("analysis", "cli")),
    ("CLIs", ("train", "evaluate", "export", "compare",
              "checkpoints.__main__", "analysis.__main__")),
    ("public names", ("__init__",)),  # flexivit_jax/__init__.py: for users, not the library.
)
# Layers held to a shorter list than "everything before them": the model knows nothing of
# files or data, and data knows nothing of models.
ONLY = {"models": ("errors", "tree", "models"),
        "data": ("errors", "tree", "paths", "xla_env", "data")}
# Repository folders that an installed package does not have.
OUTSIDE_PACKAGE = ("configs",)


def _covers(member: str, name: str) -> bool:
  return name == member or name.startswith(member + ".")


def layer_of(name: str) -> Optional[int]:
  """Index in LAYERS of a module (dotted, relative to flexivit_jax/; '__init__' = the root);
  the most specific entry wins ('checkpoints.__main__' over 'checkpoints')."""
  matches = [(len(member), index) for index, (_, members) in enumerate(LAYERS)
             for member in members if _covers(member, name)]
  return max(matches)[1] if matches else None


def module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
  """'data/ops.py' -> 'data.ops'; 'data/__init__.py' -> 'data'; the root's -> '__init__'."""
  parts = list(path.relative_to(root).with_suffix("").parts)
  if parts[-1] == "__init__" and len(parts) > 1:
    parts.pop()
  return ".".join(parts)


def _is_module(name: str, root: pathlib.Path) -> bool:
  path = root.joinpath(*name.split("."))
  return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_in(source: str, importer: str, is_package: bool, root: pathlib.Path = ROOT):
  """(line, the import as written, absolute module name) of each import in `source`, in
  functions too. `from P import n` names P.n where that is a module, else P; relative
  imports are resolved against the importer's package."""
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found += [(node.lineno, f"import {a.name}", a.name) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        package = [] if importer == "__init__" else importer.split(".")
        package = package if is_package else package[:-1]
        package = package[:len(package) - (node.level - 1)]
        base = ".".join([PACKAGE, *package, *([base] if base else [])])
      for a in node.names:
        written = f"from {'.' * node.level}{node.module or ''} import {a.name}"
        full = f"{base}.{a.name}"
        inside = full.startswith(PACKAGE + ".") and _is_module(full[len(PACKAGE) + 1:], root)
        found.append((node.lineno, written, full if inside else base))
  return sorted(found)


def violations_in(source: str, importer: str, is_package: bool = False,
                  root: pathlib.Path = ROOT) -> List[str]:
  """Each boundary an importer's source crosses, as 'line: import: why'."""
  own = layer_of(importer)
  if own is None:
    return [f"1: {importer} is in no layer: add it to LAYERS in tests/test_layers.py"]
  own_name = LAYERS[own][0]
  found = []
  for line, written, name in imports_in(source, importer, is_package, root):
    top = name.split(".")[0]
    if top in OUTSIDE_PACKAGE:
      found.append(f"{line}: {written}: {top}/ is a repository folder, not part of the package")
    if top != PACKAGE:
      continue
    target = name[len(PACKAGE) + 1:] or "__init__"
    layer = layer_of(target)
    if own_name in ONLY and not any(_covers(m, target) for m in ONLY[own_name]):
      found.append(f"{line}: {written}: {own_name} may import only "
                   f"{', '.join(ONLY[own_name])} (not {target})")
    elif layer is not None and layer > own:
      found.append(f"{line}: {written}: {own_name} may not import {LAYERS[layer][0]} "
                   f"({target}); layers run {' -> '.join(n for n, _ in LAYERS)}")
  return found


def all_violations(root: pathlib.Path = ROOT) -> List[str]:
  found = []
  for path in sorted(root.rglob("*.py")):
    importer = module_name(path, root)
    for v in violations_in(path.read_text(), importer, path.name == "__init__.py", root):
      found.append(f"{path.relative_to(root.parent)}:{v}")
  return found


def test_every_module_is_in_a_layer():
  unplaced = [str(p) for p in ROOT.rglob("*.py") if layer_of(module_name(p)) is None]
  assert not unplaced, f"modules in no layer of tests/test_layers.py LAYERS: {unplaced}"


def test_imports_respect_the_layers():
  found = all_violations()
  assert not found, "imports across the layers:\n" + "\n".join(found)


@pytest.mark.parametrize("importer, source, why", [
    ("models.vit", "def f():\n  from flexivit_jax import paths\n", "models may import only"),
    ("models.resize", "import flexivit_jax.training.loop\n", "models may import only"),
    ("data.ops", "from flexivit_jax.models import vit\n", "data may import only"),
    ("data.pipeline", "from ..training import loop\n", "data may import only"),
    ("evaluators.predict", "from flexivit_jax import train\n", "may not import CLIs"),
    ("analysis.common", "def quiet():\n  from flexivit_jax.train import quiet_libraries\n",
     "analysis may not import CLIs (train)"),
    ("evaluators.evaluation", "from flexivit_jax.training import initial_state\n",
     "evaluators may not import training"),
    ("checkpoints.npz", "from flexivit_jax.outputs import runlog\n", "may not import outputs"),
    ("training.loop", "from flexivit_jax import FlexiViT\n", "may not import public names"),
    ("training.loop", "import flexivit_jax\n", "may not import public names"),
    ("training.demos", "import configs.demo_digits\n", "configs/ is a repository folder"),
    ("cli", "from configs import demo_digits\n", "configs/ is a repository folder"),
])
def test_a_bad_import_is_named(importer, source, why):
  source = "import os\n" + source  # The bad import is on the last line.
  found = violations_in(source, importer)
  assert len(found) == 1 and why in found[0], found
  assert found[0].startswith(f"{source.count(chr(10))}: "), found


def test_a_bad_import_fails_the_tree_walk(tmp_path):
  """The walk over files names the file, its line and the import."""
  package = tmp_path / PACKAGE
  (package / "data").mkdir(parents=True)
  (package / "__init__.py").write_text("")
  (package / "data" / "__init__.py").write_text("")
  (package / "training").mkdir()
  (package / "training" / "__init__.py").write_text("")
  (package / "training" / "loop.py").write_text("")
  (package / "data" / "ops.py").write_text("import os\n\ndef f():\n  from ..training import loop\n")
  assert all_violations(package) == [
      "flexivit_jax/data/ops.py:4: from ..training import loop: data may import only "
      "errors, tree, paths, xla_env, data (not training.loop)"]


def test_allowed_imports_pass():
  assert violations_in("from flexivit_jax.errors import UserError\nimport numpy\n",
                       "models.vit") == []
  assert violations_in("from flexivit_jax.training import loop\nfrom flexivit_jax import cli\n",
                       "analysis.subjects") == []
  assert violations_in("from flexivit_jax.checkpoints import __main__\n", "export") == []
