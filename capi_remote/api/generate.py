"""The generated files (CRDs and the API reference), and whether those on disk are current."""

from pathlib import Path

from capi_remote.api import crdgen, docgen

CRD_DIR = Path("manifests/crds")
REFERENCE = Path("docs/api-reference.md")


def outputs() -> dict[Path, str]:
    """Every generated file, by path relative to the repository root."""
    files = {CRD_DIR / kind.file_name: crdgen.render(kind) for kind in crdgen.KINDS}
    files[REFERENCE] = docgen.render()
    return files


def stale(root: Path) -> list[Path]:
    """Generated files under ``root`` that are missing or differ from what the models give."""
    return [
        path
        for path, text in outputs().items()
        if not (root / path).is_file() or (root / path).read_text(encoding="utf-8") != text
    ]


def write(root: Path) -> list[Path]:
    """Write the stale files; returns them."""
    changed = stale(root)
    files = outputs()
    for path in changed:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(files[path], encoding="utf-8")
    return changed
