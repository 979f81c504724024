"""Pinning compose text: only image scalars change, over the shapes real self-hosted stacks use."""

from __future__ import annotations

import difflib

import pytest

from ansible_collections.selfhost.rollback.plugins.module_utils._pin import (
    PinError,
    interpolate,
    locate_images,
    pin_suffix,
    plan_file,
    unpin_text,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64

DIGESTS = {
    "127.0.0.1:5000/selfhost/notes:1.0": D1,
    "127.0.0.1:5000/selfhost/postgres:15": D2,
    "ollama/ollama:0.3.12": D3,
    "ollama/ollama": D3,
    "ghcr.io/open-webui/open-webui:main": D1,
    "registry.local:5000/team/app:2": D2,
    "qdrant/qdrant:v1.11": D3,
}


def fake_resolve(node, ref):
    if ref.startswith("local/"):
        return {"digest": None, "image_id": "sha256:" + "9" * 64}
    if ref not in DIGESTS:
        raise PinError(f"image {ref} is not on this engine")
    return {"digest": DIGESTS[ref], "image_id": "sha256:" + "8" * 64}


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    """Pairs of (old, new) lines; every other line is identical."""
    b, a = before.splitlines(keepends=True), after.splitlines(keepends=True)
    assert len(a) == len(b)
    return [(x, y) for x, y in zip(b, a) if x != y]


SHAPES = {
    "plain": (
        "services:\n  app:\n    image: 127.0.0.1:5000/selfhost/notes:1.0\n",
        ["    image: 127.0.0.1:5000/selfhost/notes:1.0@" + D1 + "\n"],
    ),
    "comment after the image": (
        "# top\nservices:\n  app:   # the app\n    image: 127.0.0.1:5000/selfhost/notes:1.0   # pinned by us\n",
        ["    image: 127.0.0.1:5000/selfhost/notes:1.0@" + D1 + "   # pinned by us\n"],
    ),
    "double quoted": (
        'services:\n  db:\n    image: "127.0.0.1:5000/selfhost/postgres:15"\n',
        ['    image: "127.0.0.1:5000/selfhost/postgres:15@' + D2 + '"\n'],
    ),
    "single quoted": (
        "services:\n  db:\n    image: '127.0.0.1:5000/selfhost/postgres:15'\n",
        ["    image: '127.0.0.1:5000/selfhost/postgres:15@" + D2 + "'\n"],
    ),
    "untagged image gets an explicit latest": (
        "services:\n  ollama:\n    image: ollama/ollama\n",
        ["    image: ollama/ollama:latest@" + D3 + "\n"],
    ),
    "registry with a port": (
        "services:\n  app:\n    image: registry.local:5000/team/app:2\n",
        ["    image: registry.local:5000/team/app:2@" + D2 + "\n"],
    ),
    "variable tag with default": (
        "services:\n  app:\n    image: 127.0.0.1:5000/selfhost/notes:${NOTES_VERSION:-1.0}  # upgrade here\n",
        ["    image: 127.0.0.1:5000/selfhost/notes:${NOTES_VERSION:-1.0}@" + D1 + "  # upgrade here\n"],
    ),
    "flow mapping": (
        "services:\n  q: {image: qdrant/qdrant:v1.11, restart: always}\n",
        ["  q: {image: qdrant/qdrant:v1.11@" + D3 + ", restart: always}\n"],
    ),
    "CRLF line ends": (
        "services:\r\n  app:\r\n    image: qdrant/qdrant:v1.11\r\n    restart: always\r\n",
        ["    image: qdrant/qdrant:v1.11@" + D3 + "\r\n"],
    ),
}


@pytest.mark.parametrize("text,expected", list(SHAPES.values()), ids=list(SHAPES))
def test_only_the_image_line_changes(text, expected):
    plan = plan_file(text, "compose.yaml", {"NOTES_VERSION": "1.0"}, fake_resolve)
    assert [new for _old, new in changed_lines(plan["before"], plan["after"])] == expected
    again = plan_file(plan["after"], "compose.yaml", {"NOTES_VERSION": "1.0"}, fake_resolve)
    assert again["after"] == again["before"] and not again["edits"]
    assert all(i["status"] == "already pinned" for i in again["images"])


AI_STACK = """\
# An AI stack as people write them: anchors, x- fields, profiles, build, variables.
x-ollama-image: &ollama-image ollama/ollama:0.3.12
x-common: &common
  restart: unless-stopped
  logging: {driver: json-file}

services:
  ollama:
    <<: *common
    image: *ollama-image
    profiles: [cpu]
  ollama-gpu:
    <<: *common
    image: *ollama-image   # same image, one pin
    profiles: [gpu]
  webui:
    <<: *common
    image: "ghcr.io/open-webui/open-webui:main"
    environment:
      OLLAMA_BASE_URL: http://ollama:11434
      WEBUI_SECRET_KEY: ${WEBUI_SECRET_KEY:?set it}
  pipelines:
    build: ./pipelines
  worker:
    build:
      context: ./worker
    image: local/worker:dev
  vector:
    image: ${VECTOR_IMAGE:-qdrant/qdrant:v1.11}
  base-merged:
    <<: *common
"""


def test_an_ai_stack_pins_the_anchor_once_and_reports_the_rest():
    plan = plan_file(AI_STACK, "compose.yaml", {"WEBUI_SECRET_KEY": "s3cret"}, fake_resolve)
    pairs = changed_lines(plan["before"], plan["after"])
    assert [new for _old, new in pairs] == [
        "x-ollama-image: &ollama-image ollama/ollama:0.3.12@" + D3 + "\n",
        '    image: "ghcr.io/open-webui/open-webui:main@' + D1 + '"\n',
    ]
    by_image = {i["image"]: i for i in plan["images"]}
    assert by_image["ollama/ollama:0.3.12"]["services"] == ["ollama", "ollama-gpu"]
    assert by_image["local/worker:dev"]["status"].startswith("not pinned: no registry digest")
    assert by_image["${VECTOR_IMAGE:-qdrant/qdrant:v1.11}"]["status"] == "not pinned: image comes from a variable"
    assert plan["without_image"] == ["pipelines", "base-merged"]
    assert plan["has_build"] == ["pipelines", "worker"]
    assert any("VECTOR_IMAGE" in w for w in plan["warnings"])
    assert any("local/worker:dev" in w and "image ID" in w for w in plan["warnings"])
    assert "s3cret" not in repr(plan["images"]) + repr(plan["warnings"])


def test_unpinning_takes_away_exactly_what_pinning_added():
    """Anchors, quotes and variables included: an upgrade's new tag must take effect."""
    plan = plan_file(AI_STACK, "compose.yaml", {"WEBUI_SECRET_KEY": "s3cret"}, fake_resolve)
    assert plan["after"] != AI_STACK
    assert unpin_text(plan["after"]) == AI_STACK
    text = "x-image: &img ${REG:-r}/notes:${V:-1.0}@" + D1 + "\nservices:\n  a:\n    image: *img\n  b:\n    image: 'x/y:2@" + D2 + "'\n"
    assert unpin_text(text) == "x-image: &img ${REG:-r}/notes:${V:-1.0}\nservices:\n  a:\n    image: *img\n  b:\n    image: 'x/y:2'\n"


def test_an_image_merged_from_an_anchor_is_pinned_at_the_anchor():
    text = "x-base: &base\n  image: qdrant/qdrant:v1.11\nservices:\n  a:\n    <<: *base\n  b:\n    <<: [*base]\n"
    plan = plan_file(text, "compose.yaml", {}, fake_resolve)
    assert changed_lines(plan["before"], plan["after"]) == [
        ("  image: qdrant/qdrant:v1.11\n", "  image: qdrant/qdrant:v1.11@" + D3 + "\n")]
    assert plan["images"][0]["services"] == ["a", "b"]


def test_a_tagged_anchor_keeps_its_tag_and_anchor():
    text = "services:\n  a:\n    image: !!str &img qdrant/qdrant:v1.11\n  b:\n    image: *img\n"
    plan = plan_file(text, "c.yaml", {}, fake_resolve)
    assert "    image: !!str &img qdrant/qdrant:v1.11@" + D3 + "\n" in plan["after"]


def test_already_pinned_images_stay_as_they_are_even_with_another_digest():
    text = "services:\n  a:\n    image: qdrant/qdrant:v1.11@" + D1 + "\n"
    plan = plan_file(text, "c.yaml", {}, fake_resolve)
    assert plan["after"] == text and plan["images"][0]["status"] == "already pinned"


def test_a_variable_that_already_holds_a_digest_counts_as_pinned():
    plan = plan_file("services:\n  a:\n    image: qdrant/qdrant:${TAG}\n", "c.yaml", {"TAG": "v1.11@" + D2}, fake_resolve)
    assert plan["images"][0]["status"] == "already pinned" and not plan["edits"]


def test_a_block_scalar_is_not_rewritten_but_reported():
    text = "services:\n  a:\n    image: >-\n      qdrant/qdrant:v1.11\n"
    plan = plan_file(text, "c.yaml", {}, fake_resolve)
    assert plan["after"] == text
    assert "multi-line or block scalar" in plan["warnings"][0]


def test_an_unresolvable_image_fails_the_whole_file():
    with pytest.raises(PinError, match="not on this engine"):
        plan_file("services:\n  a:\n    image: nowhere/nothing:1\n", "c.yaml", {}, fake_resolve)


@pytest.mark.parametrize("text,match", [
    ("services:\n  a:\n    image: [unclosed\n", "not valid YAML"),
    ("services:\n  a: {image: x\n", "not valid YAML"),
    ("- just\n- a list\n", "top level is not a mapping"),
    ("services: [a, b]\n", "'services' is not a mapping"),
    ("services:\n  a:\n    image: {name: x}\n", "is not a string"),
    ("services:\n  a:\n    image: x:${MISSING:?must be set}\n", "MISSING is required: must be set"),
])
def test_bad_input_is_a_clear_error(text, match):
    with pytest.raises(PinError, match=match):
        plan_file(text, "c.yaml", {}, fake_resolve)


def test_a_file_without_services_has_nothing_to_pin():
    assert locate_images("x-only: 1\n").nodes == []
    assert locate_images("").nodes == []


def test_diff_of_the_demo_compose_file_is_two_lines(tmp_path):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[4] / "demo" / "compose.yaml").read_text()
    plan = plan_file(text, "compose.yaml", {"NOTES_VERSION": "1.0", "NOTES_DB_PASSWORD": "pw"}, fake_resolve)
    diff = [line for line in difflib.unified_diff(text.splitlines(), plan["after"].splitlines(), lineterm="", n=0)
            if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
    assert len(diff) == 4
    assert plan["after"].replace("@" + D1, "").replace("@" + D2, "") == text


@pytest.mark.parametrize("value,env,expected", [
    ("a:${T}", {"T": "1"}, "a:1"),
    ("a:${T:-2}", {}, "a:2"),
    ("a:${T:-2}", {"T": ""}, "a:2"),
    ("a:${T-2}", {"T": ""}, "a:"),
    ("a:$T", {"T": "3"}, "a:3"),
    ("a$$b", {}, "a$b"),
    ("${R:-reg:5000}/x:${T:-${U:-4}}", {}, "reg:5000/x:4"),
    ("a:${T:+set}", {"T": "x"}, "a:set"),
    ("a:${T:+set}", {}, "a:"),
])
def test_interpolation_follows_compose(value, env, expected):
    assert interpolate(value, env) == expected


@pytest.mark.parametrize("ref,suffix", [
    ("x/y:1", "@" + D1),
    ("x/y", ":latest@" + D1),
    ("host:5000/x/y", ":latest@" + D1),
    ("host:5000/x/y:2", "@" + D1),
])
def test_pin_suffix(ref, suffix):
    assert pin_suffix(ref, D1) == suffix
