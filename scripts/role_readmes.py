"""Write each role's README.md from its meta/argument_specs.yml, the one place its variables are documented.

    python scripts/role_readmes.py          # rewrite the READMEs
    python scripts/role_readmes.py --check  # exit 1 when one is out of date (the unit tests run this)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PLAYBOOKS = {p.stem for p in (REPO / "playbooks").glob("*.yml")}
MARKUP = re.compile(r"\b([CIVORM])\(([^()]*)\)")


def plain(text: object) -> str:
    """Ansible's doc markup as Markdown: C(x), V(x), O(x), RV(x) as code, I(x) as emphasis, M(x) as the module name."""
    def one(match: re.Match) -> str:
        kind, body = match.group(1), match.group(2)
        return f"*{body}*" if kind == "I" else f"`{body}`"
    return MARKUP.sub(one, " ".join(str(text).split())).replace("|", "\\|")


def paragraphs(value: object) -> list[str]:
    return [plain(v) for v in (value if isinstance(value, list) else [value]) if v]


def shown(value: object) -> str:
    text = '""' if value == "" else str(value)
    return "`" + text.replace("|", "\\|") + "`"


def readme(role: str, spec: dict) -> str:
    main = spec["argument_specs"]["main"]
    lines = [f"# selfhost.rollback.{role}", "", plain(main.get("short_description", "")) + ".", ""]
    for text in paragraphs(main.get("description")):
        lines += [text, ""]
    lines += ["## Use", ""]
    if role in PLAYBOOKS:
        lines += ["Through the collection's playbook, with variables as below:", "", "```sh",
                  f"ansible-playbook -i inventory.yml selfhost.rollback.{role}", "```", "",
                  "or as a role in a play of your own:", ""]
    lines += ["```yaml", "- hosts: all", "  roles:", f"    - role: selfhost.rollback.{role}", "```", "",
              "## Variables", "", "| variable | type | default | what it does |", "|---|---|---|---|"]
    for name, option in (main.get("options") or {}).items():
        kind = option.get("type", "str")
        if option.get("elements"):
            kind += f" of {option['elements']}"
        default = "required" if option.get("required") else (shown(option["default"]) if "default" in option else "")
        lines.append(f"| `{name}` | {kind} | {default} | {' '.join(paragraphs(option.get('description')))} |")
    lines += ["", "Generated from `meta/argument_specs.yml` by `scripts/role_readmes.py`; the collection's README and",
              "`docs/` say how the pieces fit together.", ""]
    return "\n".join(lines)


def main() -> int:
    stale = []
    for spec_path in sorted(REPO.glob("roles/*/meta/argument_specs.yml")):
        role = spec_path.parent.parent.name
        text = readme(role, yaml.safe_load(spec_path.read_text()))
        target = spec_path.parent.parent / "README.md"
        if target.exists() and target.read_text() == text:
            continue
        if "--check" in sys.argv:
            stale.append(str(target.relative_to(REPO)))
        else:
            target.write_text(text)
    if stale:
        print("out of date (run python scripts/role_readmes.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
