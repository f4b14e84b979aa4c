"""The generated docs are current, and every setting and mapping key is documented."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from crmsync.config import Settings
from crmsync.domain import ConflictRule, FieldType, Flow
from crmsync.mapping import MappingError, build
from crmsync.mapping.model import FieldEntry, ObjectEntry

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setting_is_documented_in_the_configuration_reference() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    missing = [
        name
        for name in Settings.model_fields
        if name != "objects" and f"`CRMSYNC_{name.upper()}`" not in text
    ]
    assert not missing, f"undocumented settings: {missing}; run `make docs`"
    assert "[objects.<name>]" in text


def test_generated_docs_are_current() -> None:
    gen = generator()
    for path, text in gen.targets().items():
        assert path.read_text(encoding="utf-8") == text, f"{path.name} is stale; run `make docs`"


def test_check_mode_reports_a_stale_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    gen = generator()
    (tmp_path / "configuration.md").write_text(
        f"# Configuration\n\n{gen.BEGIN}\nold table\n{gen.END}\n", encoding="utf-8"
    )
    (tmp_path / "mapping.md").write_text(
        f"# Mapping\n\n{gen.MAPPING_BEGIN}\nold keys\n{gen.MAPPING_END}\nkept\n",
        encoding="utf-8",
    )
    (tmp_path / "troubleshooting.md").write_text(
        f"# Troubleshooting\n\n{gen.FIXES_BEGIN}\nold fixes\n{gen.FIXES_END}\n", encoding="utf-8"
    )
    monkeypatch.setattr(gen, "DOCS", tmp_path)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
    assert "`CRMSYNC_BATCH_SIZE`" in (tmp_path / "configuration.md").read_text(encoding="utf-8")
    mapping = (tmp_path / "mapping.md").read_text(encoding="utf-8")
    assert "| `max_length` |" in mapping and "old keys" not in mapping
    assert mapping.endswith(f"{gen.MAPPING_END}\nkept\n")  # the hand-written part stays


def test_troubleshooting_lists_every_fix_verbatim() -> None:
    from crmsync import diagnosis

    text = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    for f in diagnosis.FIXES:
        assert f"| {f.fix} |" in text, f.fix
    for category in diagnosis.category_fixes():
        assert f"| `{category}` |" in text


def test_the_mapping_reference_documents_every_key_value_and_limit() -> None:
    text = (DOCS / "mapping.md").read_text(encoding="utf-8")
    for model in (ObjectEntry, FieldEntry):
        for name in model.model_fields:
            assert f"| `{name}` |" in text, f"mapping key {name} is undocumented"
    for enum in (FieldType, Flow, ConflictRule):
        for member in enum:
            assert f"`{member.value}`" in text
    assert "4,000" in text and "1,048,576" in text  # MAX_STRING, MAX_MEMO
    # Every type has its row in the hand-written type table.
    for kind in FieldType:
        assert re.search(rf"^\| `{kind.value}` \| ", text, re.M), kind


def _toml_blocks(page: Path) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", page.read_text("utf-8"), re.S)


@pytest.mark.parametrize("page", ["mapping.md", "configuration.md", "../README.md"])
def test_the_mapping_examples_in_the_docs_are_valid_mappings(page: str) -> None:
    import textwrap
    import tomllib

    blocks = _toml_blocks(DOCS / page)
    assert blocks
    for block in blocks:
        data = tomllib.loads(textwrap.dedent(block))
        if "objects" in data:
            try:
                build(data["objects"])
            except MappingError as exc:  # pragma: no cover - the message is the point
                pytest.fail(f"{page}: an example is not a valid mapping:\n{exc}")


def test_api_reference_lists_every_route_of_the_openapi_document() -> None:
    gen = generator()
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    for path, methods in gen.openapi()["paths"].items():
        if path.startswith("/api/v1/records/") and "{object}" not in path:
            # An object's own path: the {object} route, its schemas listed by name.
            assert f"### {path.split('/')[4].capitalize()}Fields" in text
            continue
        for method in methods:
            assert f"### `{method.upper()} {path}`" in text


def test_docs_link_to_files_that_exist() -> None:
    for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(((?!https?:|#|mailto:)[^)#\s]+)", page.read_text("utf-8")):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_the_script_runs_in_check_mode() -> None:
    result = subprocess.run(
        [sys.executable, str(DOCS / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
