"""The documentation against what it documents: every spec field in docs/spec-reference.md with the
schema's default and valid values, and every relative link and source path in README.md and docs/
pointing at a file that exists. Fast: it imports the schema and reads Markdown, nothing else."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, BeforeValidator
from pydantic_core import PydanticUndefined

from tao_qc.spec.schema import ExperimentSpec, QuantizeSpec, TaskSpec

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
REFERENCE = DOCS / "spec-reference.md"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]



# --- the schema, walked ------------------------------------------------------------------------------


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _choices(annotation: Any, metadata: list[Any]) -> tuple[str, ...] | None:
    """The values a `_choice` validator accepts (a tuple of strings in its closure), searched in the
    field's metadata and in the Annotated types it is built of (a list of choices: its items')."""
    validators = [m for m in metadata if isinstance(m, BeforeValidator)]
    stack = [annotation]
    while stack:
        current = stack.pop()
        validators += [m for m in getattr(current, "__metadata__", ()) if isinstance(m, BeforeValidator)]
        stack.extend(typing.get_args(current))
    for validator in validators:
        for cell in getattr(validator.func, "__closure__", None) or ():
            contents = cell.cell_contents
            if isinstance(contents, tuple) and contents and all(isinstance(v, str) for v in contents):
                return contents
    return None


def _fields(model: type[BaseModel], prefix: str) -> dict[str, tuple[Any, tuple[str, ...] | None]]:
    """Every field under `prefix` as {dotted path: (default, valid values)}; a nested model's own
    fields are listed under it (`quantize.layers[].weights.dtype`, `quantize.tensorrt.profiles.<input>.min`)."""
    out: dict[str, tuple[Any, tuple[str, ...] | None]] = {}
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}"
        if field.is_required():
            default: Any = "required"
        elif field.default_factory is not None:
            default = field.default_factory()
        else:
            default = field.default
        if isinstance(default, BaseModel):
            default = "section"  # a nested section: its own fields carry the defaults
        nested = _model_in(field.annotation)
        out[path] = (default, _choices(field.annotation, field.metadata))
        if nested is not None:
            origin = typing.get_origin(field.annotation)
            args = typing.get_args(field.annotation)
            if origin is list:
                out.update(_fields(nested, f"{path}[]"))
            elif origin is dict and args and args[0] is str:
                out.update(_fields(nested, f"{path}.<input>"))
            else:
                out.update(_fields(nested, path))
    return out


def schema_fields() -> dict[str, tuple[Any, tuple[str, ...] | None]]:
    fields = _fields(QuantizeSpec, "quantize")
    for section in ("evaluate", "inference"):
        assert _model_in(ExperimentSpec.model_fields[section].annotation) is TaskSpec
        fields.update(_fields(TaskSpec, section))
    return fields


# --- the reference page, read ------------------------------------------------------------------------

ROW = re.compile(r"^\|\s*`(?P<path>(?:quantize|evaluate|inference)\.[^`]+)`\s*\|(?P<rest>.*)\|\s*$")


def _cells(rest: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", rest)]


def documented_fields() -> dict[str, tuple[str, str, str]]:
    """{dotted path: (type, default, valid values)} from the reference's table rows
    (| `path` | type | default | valid values | meaning |)."""
    rows: dict[str, tuple[str, str, str]] = {}
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            cells = _cells(match["rest"])
            assert len(cells) >= 4, f"spec-reference.md: row of {match['path']} needs type, default, valid values, meaning"
            assert match["path"] not in rows, f"spec-reference.md: {match['path']} is documented twice"
            rows[match["path"]] = (cells[0], cells[1], cells[2])
    return rows


def _documented_default(cell: str) -> Any:
    """`required`, `section` (a nested section), `not set` (None), or one backticked YAML value."""
    if cell in ("required", "section", "not set"):
        return None if cell == "not set" else cell
    match = re.fullmatch(r"`([^`]*)`", cell)
    assert match, f"a default is `a YAML value`, 'not set', 'section' or 'required'; got {cell!r}"
    return yaml.safe_load(match[1])


def test_every_spec_field_is_documented_with_the_schemas_default_and_values() -> None:
    schema = schema_fields()
    documented = documented_fields()
    missing = sorted(set(schema) - set(documented))
    assert not missing, f"fields missing from docs/spec-reference.md: {missing}"
    unknown = sorted(set(documented) - set(schema))
    assert not unknown, f"docs/spec-reference.md documents fields the schema does not have: {unknown}"
    for path, (default, valid) in schema.items():
        _, default_cell, valid_cell = documented[path]
        written = _documented_default(default_cell)
        assert written == default and type(written) is type(default) or (
            isinstance(default, float) and isinstance(written, (int, float)) and float(written) == default), (
            f"docs/spec-reference.md: {path} default {default_cell} but the schema's is {default!r}")
        if valid is not None:
            listed = set(re.findall(r"`([^`]+)`", valid_cell))
            assert listed == set(valid), (
                f"docs/spec-reference.md: {path} lists {sorted(listed)} but the schema accepts {sorted(valid)}")


def test_the_reference_reads_a_default_differing_from_the_schema_as_a_failure() -> None:
    # The comparison itself: a written default is its YAML value, so `4` is not `"4"` and `off` is false.
    assert _documented_default("`4.0`") == 4.0
    assert _documented_default("`[clip, float]`") == ["clip", "float"]
    assert _documented_default("not set") is None
    assert _documented_default("`auto`") != _documented_default("`off`")
    with pytest.raises(AssertionError):
        _documented_default("auto")


# --- links and paths ---------------------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SOURCE_PATH = re.compile(
    r"`((?:tao_qc|tests|bench|examples|golden)/[\w./-]*\w\.(?:py|md|yaml|json|txt|tsv))(?::[^`]*)?`")


def _without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(_without_code_blocks(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor on the same page
        file_part = target.split("#", 1)[0]
        if not (page.parent / file_part).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)}: links to files that do not exist: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_source_paths_named_exist(page: Path) -> None:
    missing = [path for path in SOURCE_PATH.findall(page.read_text(encoding="utf-8"))
               if not (REPO / path).exists()]
    assert not missing, f"{page.relative_to(REPO)}: names files that do not exist: {missing}"


def test_the_readme_stays_short_and_links_into_the_guide() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 260, "README.md is the ten-minute read: move detail into docs/"
    assert "docs/index.md" in readme
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    for page in sorted(DOCS.glob("*.md")):
        if page.name != "index.md":
            assert f"({page.name})" in index, f"docs/index.md does not link {page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_whole_specs_shown_are_valid(page: Path) -> None:
    """A YAML block that is a whole spec (it starts with `quantize:`) loads as one: the annotated
    examples cannot drift from the schema either. Fragments (`  layers: ...`) are not checked."""
    from tao_qc.spec.schema import load_spec

    blocks = re.findall(r"^```yaml\n(.*?)^```", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    for block in blocks:
        if block.startswith("quantize:"):
            load_spec(yaml.safe_load(block))
