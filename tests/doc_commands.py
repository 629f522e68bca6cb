"""The shell commands that README.md and docs/*.md show, and a check that each would work.

Used by tests/test_docs_commands.py and by .ci/run (which runs the README's
set-up commands exactly as written: `python tests/doc_commands.py setup N`
prints the Nth command of README.md's first fenced bash block).

A command is one line of a ```bash / ```sh / ```shell / ```console block (or of
an untagged block that shows `$ ` prompts), or a `code span` of the prose that
starts like a command of this project, with `\\` continuations joined, the
prompt and a trailing `# comment` taken off, and `&&`, `||`, `;`, `|` and `&`
splitting it into several. A line holding `[`, `]` or a `...` word is a usage
pattern (`--config CONFIG.py[:arg]`): only its flag names are checked, and it
is never run; nor is a code span (prose names a command, a block shows one to
type). A trailing comment saying "not run by the tests" (and why) marks a
command of a block that the tests check but do not run (a TPU pod, a bucket, hours).

`check(command)` returns what is wrong with a command that invokes this
project: a module or script that does not exist, a flag its parser rejects, a
config file, `:arg` or `--config.KEY` that does not load. The parsers come
from `ARGPARSE_CLIS` below: a new CLI needs one line there, and
a project command with no entry fails the check rather than passing unchecked.
Only the extraction half runs without the project's dependencies (.ci/run
calls it before installing anything).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
import sys
from typing import Dict, Iterator, List, Sequence, Tuple

REPO = pathlib.Path(__file__).resolve().parent.parent
SHELL_LANGS = ("bash", "sh", "shell", "console", "shell-session", "zsh")
NOT_RUN = "not run by the tests"
PROMPT = "$ "
OPERATORS = ("&&", "||", ";", "|", "&")

# Project CLIs by module, and the function that builds each one's argparse parser.
ARGPARSE_CLIS: Dict[str, str] = {
    "flexivit_jax.train": "build_parser",
    "flexivit_jax.evaluate": "build_parser",
    "flexivit_jax.export": "build_parser",
    "flexivit_jax.checkpoints": "build_parser",
    "flexivit_jax.compare": "build_parser",
    "flexivit_jax.analysis.cka": "build_parser",
    "flexivit_jax.analysis.resize_methods": "build_parser",
    "flexivit_jax.analysis.zero_shot": "build_parser",
}
TRAIN = "flexivit_jax.train"  # Also checked: its config file and `--config.KEY` overrides.
PACKAGE = "flexivit_jax"


@dataclasses.dataclass(frozen=True)
class DocCommand:
  """One command as a doc shows it."""
  doc: str          # Path relative to the repo.
  line: int         # 1-based line of the doc where the command starts.
  text: str         # The command, continuations joined, prompt and comment removed.
  comment: str      # The trailing comment ('' if none).
  pattern: bool     # A usage pattern: placeholders, `[optional]` parts or `...`.
  inline: bool = False  # A `code span` in the prose rather than a line of a shell block.

  @property
  def argv(self) -> List[str]:
    return shlex.split(self.text) if not self.pattern else _pattern_words(self.text)

  @property
  def not_run(self) -> bool:
    return NOT_RUN in self.comment

  def where(self) -> str:
    return f"{self.doc}:{self.line}: {self.text}"


# ---------------------------------------------------------------- extraction (stdlib only)

def fenced_blocks(text: str) -> Iterator[Tuple[str, int, List[str]]]:
  """(language, line number of the first content line, lines) of each ``` block."""
  lang, start, lines = None, 0, []
  for number, line in enumerate(text.splitlines(), 1):
    stripped = line.strip()
    if stripped.startswith("```"):
      if lang is None:
        lang, start, lines = stripped[3:].strip().lower(), number + 1, []
      else:
        yield lang, start, lines
        lang = None
    elif lang is not None:
      lines.append(line)


def split_comment(line: str) -> Tuple[str, str]:
  """(code, comment): a `#` that starts a word outside quotes starts the comment."""
  quote, prev = None, " "
  for i, ch in enumerate(line):
    if quote:
      if ch == quote:
        quote = None
    elif ch in "'\"":
      quote = ch
    elif ch == "#" and prev.isspace():
      return line[:i].rstrip(), line[i + 1:].strip()
    prev = ch
  return line.rstrip(), ""


def logical_lines(lang: str, start: int, lines: Sequence[str]) -> Iterator[Tuple[int, str, str]]:
  """(line number, code, comment) of each command line; continuations joined."""
  console = lang in ("console", "shell-session") or (
      lang == "" and any(l.lstrip().startswith(PROMPT) for l in lines))
  if lang not in SHELL_LANGS and not console:
    return
  pending, first, comments = None, 0, []
  for number, raw in enumerate(lines, start):
    line = raw.strip()
    if pending is None:
      if console:
        if not line.startswith(PROMPT):
          continue  # Output shown after a command.
        line = line[len(PROMPT):]
      if not line or line.startswith("#"):
        continue
      pending, first, comments = "", number, []
    code, comment = split_comment(line)
    if comment:
      comments.append(comment)
    if code.endswith("\\"):
      pending += code[:-1].rstrip() + " "
      continue
    yield first, (pending + code).strip(), " ".join(comments)
    pending = None
  if pending is not None:
    yield first, pending.strip(), " ".join(comments)


def is_pattern(code: str, inline: bool = False) -> bool:
  """A usage pattern: `[optional]` parts or `...` outside quotes (in prose, also `a|b`)."""
  unquoted = re.sub(r"'[^']*'|\"[^\"]*\"", "", code)
  return ("[" in unquoted or "]" in unquoted or "..." in unquoted.split()
          or (inline and "|" in unquoted))


def split_operators(code: str) -> List[str]:
  """Splits `a && b | c &` into commands, outside quotes."""
  lex = shlex.shlex(code, posix=True, punctuation_chars="&|;")
  lex.whitespace_split = True
  lex.commenters = ""
  parts, current = [], []
  for token in lex:
    if token in OPERATORS or set(token) <= set("&|;"):
      parts.append(current)
      current = []
    else:
      current.append(token)
  parts.append(current)
  return [shlex.join(p) for p in parts if p]


def _pattern_words(text: str) -> List[str]:
  """The words of a usage pattern, with `[`, `]` and `|` alternatives spaced out."""
  return [w for w in re.split(r"[\s\[\]]+", re.sub(r"'[^']*'|\"[^\"]*\"", "X", text)) if w]


def _commands_of(doc: str, number: int, code: str, comment: str, inline: bool
                 ) -> List[DocCommand]:
  if is_pattern(code, inline):
    return [DocCommand(doc, number, code, comment, pattern=True, inline=inline)]
  return [DocCommand(doc, number, part, comment, pattern=False, inline=inline)
          for part in split_operators(code)]


# Code spans in the prose that are commands of this project (the rest are names, values).
INLINE_COMMAND = re.compile(r"^(python3? (-m flexivit_jax|benchmarks/)|flexivit-|launch/[\w.-]+|"
                            r"(bash|sh|sbatch) .*launch/)")


def inline_spans(text: str) -> Iterator[Tuple[int, str]]:
  """(line, code) of each `code span` outside fenced blocks that starts like a command."""
  inside = False
  for number, line in enumerate(text.splitlines(), 1):
    if line.strip().startswith("```"):
      inside = not inside
      continue
    if not inside:
      for span in re.findall(r"`([^`]+)`", line):
        # A lone word (`flexivit-train`, `launch/local.sh`) names a command; it runs nothing.
        if INLINE_COMMAND.match(span.strip()) and len(span.split()) > 1:
          yield number, span.strip()


def doc_commands(doc: str) -> List[DocCommand]:
  """Every command of one doc (path relative to the repo), in order: blocks, then spans."""
  text = (REPO / doc).read_text()
  out = []
  for lang, start, lines in fenced_blocks(text):
    for number, code, comment in logical_lines(lang, start, lines):
      out.extend(_commands_of(doc, number, code, comment, inline=False))
  for number, code in inline_spans(text):
    out.extend(_commands_of(doc, number, code, "", inline=True))
  return out


def docs() -> List[str]:
  return ["README.md"] + sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))


def all_commands() -> List[DocCommand]:
  return [c for doc in docs() for c in doc_commands(doc)]


def setup_lines(readme: str = "README.md") -> List[str]:
  """The README's set-up commands: the lines of its first bash block, `&&` kept."""
  lang, start, lines = next(fenced_blocks((REPO / readme).read_text()))
  return [code for _, code, _ in logical_lines(lang, start, lines)]


# ---------------------------------------------------------------- what a command invokes

@dataclasses.dataclass(frozen=True)
class Target:
  kind: str          # 'module', 'script', 'launch', 'pytest', or '' (not this project)
  name: str          # Module name or path relative to the repo.
  args: Tuple[str, ...]


@functools.lru_cache(None)
def console_scripts() -> Dict[str, str]:
  """{script: module}: setup.py's console_scripts and pyproject.toml's [project.scripts]."""
  scripts = {}
  setup, pyproject = REPO / "setup.py", REPO / "pyproject.toml"
  if setup.exists():  # "flexivit-train=flexivit_jax.train:main"
    for m in re.finditer(r"[\"']([\w-]+)\s*=\s*([\w.]+):\w+[\"']", setup.read_text()):
      scripts[m.group(1)] = m.group(2)
  if pyproject.exists():  # flexivit-train = "flexivit_jax.train:main"
    for m in re.finditer(r"(?m)^\s*[\"']?([\w-]+)[\"']?\s*=\s*[\"']([\w.]+):\w+[\"']",
                         pyproject.read_text()):
      scripts[m.group(1)] = m.group(2)
  return scripts


def target(argv: Sequence[str]) -> Target:
  """What a command runs; kind '' when it is not this project (pip, cd, gcloud, ...)."""
  argv = list(argv)
  while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):  # VAR=value prefixes.
    argv = argv[1:]
  if not argv:
    return Target("", "", ())
  prog, rest = argv[0], tuple(argv[1:])
  if re.fullmatch(r"python[\d.]*", os.path.basename(prog)) and rest:
    if rest[0] == "-m" and len(rest) > 1:
      module, args = rest[1], rest[2:]
      if module == "pytest":
        return Target("pytest", module, args)
      if module.split(".")[0] == PACKAGE:
        return Target("module", module, args)
      return Target("", module, args)
    if rest[0].endswith(".py"):
      return Target("script", rest[0], rest[1:])
  if prog in ("bash", "sh", "sbatch"):  # `sbatch --nodes=K launch/slurm.sbatch ...`
    at = next((i for i, a in enumerate(rest) if a.startswith("launch/")), None)
    if at is not None:
      prog, rest = rest[at], rest[at + 1:]
  if prog.startswith(("launch/", "./launch/")):
    return Target("launch", os.path.normpath(prog), rest)
  if prog == "pytest":
    return Target("pytest", prog, rest)
  if prog.startswith("flexivit"):
    module = console_scripts().get(prog)
    package = module[:-len(".__main__")] if module and module.endswith(".__main__") else None
    if package and package not in ARGPARSE_CLIS and rest:  # `flexivit-analysis NAME ARGS`.
      return Target("module", f"{package}.{rest[0]}", rest[1:])
    return Target("module", package or module or prog, rest)
  return Target("", prog, rest)


# ---------------------------------------------------------------- static checks

def check(command: DocCommand) -> List[str]:
  """What is wrong with a command of this project ([] if nothing, or not this project)."""
  t = target(command.argv)
  checker = {"module": _check_module, "script": _check_script, "launch": _check_launch,
             "pytest": _check_pytest}.get(t.kind)
  if checker is None:
    return []
  try:
    return checker(t, command.pattern)
  except Exception as e:  # pylint: disable=broad-except
    return [f"{type(e).__name__}: {e}"]


def _check_module(t: Target, pattern: bool) -> List[str]:
  package, _, last = t.name.rpartition(".")
  if last.isupper():  # A placeholder: `python -m flexivit_jax.analysis.NAME --out DIR`
    return _check_any_cli_of(package, t.args)
  if not t.name.startswith(PACKAGE + ".") and t.name not in console_scripts().values():
    return [f"{t.name!r} is not a console script of setup.py ({sorted(console_scripts())})"]
  if importlib.util.find_spec(t.name) is None:
    return [f"no module {t.name}"]
  if t.name == TRAIN:
    return _check_train(t.args, pattern)
  if t.name in ARGPARSE_CLIS:
    parser = getattr(_cli_module(t.name), ARGPARSE_CLIS[t.name])()
    return _check_argparse(parser, t.args, pattern)
  return [f"no argument check for {t.name}: add it to ARGPARSE_CLIS in "
          "tests/doc_commands.py"]


def _cli_module(name: str):
  """The module `python -m name` runs: the module, or a package's `__main__`."""
  spec = importlib.util.find_spec(name)
  if spec is not None and spec.submodule_search_locations is not None:
    name += ".__main__"
  return importlib.import_module(name)


def _check_any_cli_of(package: str, args: Sequence[str]) -> List[str]:
  """A pattern naming `package.NAME` stands for each CLI there: each must take its flags."""
  modules = [m for m in ARGPARSE_CLIS if m.startswith(package + ".")]
  if not modules:
    return [f"no CLI in ARGPARSE_CLIS under {package}"]
  problems = []
  for module in modules:
    parser = getattr(_cli_module(module), ARGPARSE_CLIS[module])()
    known = set(parser._option_string_actions)  # pylint: disable=protected-access
    problems += [f"{module} takes no {name}" for name in _flag_names(args) if name not in known]
  return problems


def _flag_names(args: Sequence[str]) -> List[str]:
  return [a.split("=", 1)[0] for a in args if a.startswith("-") and a not in ("-", "--")]


def _check_argparse(parser, args: Sequence[str], pattern: bool) -> List[str]:
  from flexivit_jax.errors import UserError
  args = [a for a in args if a != "--verbose"]  # Taken out by cli.py before parsing.
  if pattern:
    known = set(parser._option_string_actions)  # pylint: disable=protected-access
    return [f"unknown flag {name}" for name in _flag_names(args) if name not in known]
  try:
    parser.parse_args(list(args))  # A cli.ArgumentParser: any parse error is a UserError.
  except UserError as e:
    return [str(e)]
  return []


def _check_train(args: Sequence[str], pattern: bool) -> List[str]:
  """train's flags, then its config file and overrides, loaded as the trainer loads them."""
  from flexivit_jax import train
  from flexivit_jax.training import config as config_lib
  rest, overrides = train.split_config_overrides([a for a in args if a != "--verbose"])
  problems = _check_argparse(train.build_parser(), rest, pattern)
  if pattern or problems:
    return problems
  spec = train.build_parser().parse_args(rest).config
  path, sep, arg = spec.partition(":")
  full_spec = str(REPO / path) + sep + arg if not os.path.isabs(path) else spec
  try:
    config_lib.complete(config_lib.load_config_file(full_spec), overrides)
  except Exception as e:  # pylint: disable=broad-except
    return [f"--config {spec}: {type(e).__name__}: {e}"]
  return []


def _help_text(argv: Sequence[str]) -> str:
  proc = subprocess.run(list(argv), cwd=REPO, capture_output=True, text=True, timeout=300)
  return proc.stdout + proc.stderr


@functools.lru_cache(None)
def launch_help(path: str) -> str:
  return _help_text(["bash", path, "--help"])


def _flags_in_help(help_text: str, args: Sequence[str]) -> List[str]:
  options = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_text))
  return [f"unknown flag {name}" for name in _flag_names(args) if name not in options]


def _check_script(t: Target, pattern: bool) -> List[str]:
  """A benchmark: its flags against the options its argparse parser adds (read, not run)."""
  if not (REPO / t.name).is_file():
    return [f"no script {t.name}"]
  if not t.name.startswith("benchmarks/"):
    return [f"no argument check for script {t.name}"]
  source = (REPO / t.name).read_text()
  options = set(re.findall(r"add_argument\(\s*[\"'](--?[\w-]+)[\"']", source))
  return [f"unknown flag {name}" for name in _flag_names(t.args) if name not in options]


def _check_launch(t: Target, pattern: bool) -> List[str]:
  if not (REPO / t.name).is_file():
    return [f"no launch script {t.name}"]
  own = list(t.args[:t.args.index("--")]) if "--" in t.args else list(t.args)
  problems = _flags_in_help(launch_help(t.name), own)
  if "--" in t.args:  # What follows `--` goes to `python -m flexivit_jax.train`.
    problems += _check_train(t.args[t.args.index("--") + 1:], pattern)
  return problems


def _check_pytest(t: Target, pattern: bool) -> List[str]:
  problems = []
  if importlib.util.find_spec("pytest") is None:
    problems.append("pytest is not installed")
  if "-n" in t.args and importlib.util.find_spec("xdist") is None:
    problems.append("-n needs pytest-xdist")
  for arg in t.args:  # Test paths are relative to the repo root.
    if arg == "tests" or arg.startswith("tests/"):
      if not (REPO / arg.split("::")[0]).exists():
        problems.append(f"no test path {arg}")
  return problems


def final_table(log: str, header: str = "Accuracy per patch size") -> List[Tuple[int, float]]:
  """[(seqhw, prec@1 %)] from the last final table a training log printed, coarsest grid first.

  The trainer prints `header`, a column line and a dashed line, then one row per
  evaluated size: seqhw, patch, `NN.NN%` (and GFLOPs/img when known).
  """
  rows: List[Tuple[int, float]] = []
  lines = log.splitlines()
  starts = [i for i, line in enumerate(lines) if line.startswith(header)]
  if not starts:
    return rows
  for line in lines[starts[-1] + 3:]:
    m = re.match(r"^\s*(\d+)\s+\d+\s+([\d.]+)%", line)
    if not m:
      break
    rows.append((int(m.group(1)), float(m.group(2))))
  return sorted(rows)


def table_rises(log: str) -> Tuple[bool, str]:
  """Whether the final table's accuracy at the finest grid is above the coarsest's (the
  README demo's promise: accuracy bought with compute), and a line saying so."""
  rows = final_table(log)
  if len(rows) < 2:
    return False, f"the final table has {len(rows)} rows; it needs two sizes or more"
  (coarse, low), (fine, high) = rows[0], rows[-1]
  verdict = "rises" if high > low else "does not rise"
  return high > low, (f"accuracy {verdict} from the coarsest grid (seqhw {coarse}: {low:.2f}%) "
                      f"to the finest (seqhw {fine}: {high:.2f}%)")


if __name__ == "__main__":
  if len(sys.argv) == 3 and sys.argv[1] == "setup":
    print(setup_lines()[int(sys.argv[2]) - 1])
  elif len(sys.argv) == 3 and sys.argv[1] == "rises":
    ok, line = table_rises(pathlib.Path(sys.argv[2]).read_text())
    print(line)
    sys.exit(0 if ok else 1)
  else:
    sys.exit("usage: python tests/doc_commands.py setup N   (the README's Nth set-up command)\n"
             "       python tests/doc_commands.py rises LOG  (the demo's table rises?)")
