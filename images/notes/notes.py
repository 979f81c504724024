"""notes: the demo "AI notes" app of the selfhost.rollback test bed.

One source, four versions (NOTES_VERSION, baked into each image):

* 1.0 writes schema 1 and runs on schema 1 or 2 (2 is additive);
* 1.1 writes schema 2 (adds an embedding column);
* 2.0 writes schema 3, a destructive migration (notes -> documents, body -> content),
  so 1.x refuses to start on it;
* 2.1 is schema 3 too, but broken: health fails and writes error under load;
* 2.2 is schema 3 too and healthy everywhere, but its answers come from a smaller model:
  ``/answer`` still answers 200, with a lower quality score and more tokens per answer.

Migrations run on start and are recorded in ``schema_migrations``.  The database
password comes from the environment (the project's ``.env``), never from a file
or a command line.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2

VERSION = os.environ.get("NOTES_VERSION", "0.0")
CODE_SCHEMA = {"1.0": 1, "1.1": 2, "2.0": 3, "2.1": 3, "2.2": 3}
# the newest schema each version can run on
MAX_SCHEMA = {"1.0": 2, "1.1": 2, "2.0": 3, "2.1": 3, "2.2": 3}
BROKEN = VERSION == "2.1"
DEGRADED = VERSION == "2.2"  # every probe passes; the answers are worse and cost more
UPLOADS = os.environ.get("NOTES_UPLOADS", "/data/uploads")
CONFIG_DIR = os.environ.get("NOTES_CONFIG_DIR", "/etc/notes")

MIGRATIONS = {
    1: [
        """CREATE TABLE notes (
               id serial PRIMARY KEY,
               title text NOT NULL,
               body text NOT NULL,
               created_at timestamptz NOT NULL DEFAULT now())""",
    ],
    2: ["ALTER TABLE notes ADD COLUMN embedding real[]"],
    3: [
        "ALTER TABLE notes RENAME TO documents",
        "ALTER TABLE documents RENAME COLUMN body TO content",
        "ALTER SEQUENCE notes_id_seq RENAME TO documents_id_seq",
    ],
}


def log(message: str) -> None:
    print(f"notes {VERSION}: {message}", flush=True)


def connect():
    deadline = time.monotonic() + float(os.environ.get("NOTES_DB_WAIT", "60"))
    while True:
        try:
            conn = psycopg2.connect(
                host=os.environ.get("NOTES_DB_HOST", "db"),
                dbname=os.environ.get("NOTES_DB_NAME", "notes"),
                user=os.environ.get("NOTES_DB_USER", "notes"),
                password=os.environ.get("NOTES_DB_PASSWORD", ""),
                connect_timeout=3,
            )
            conn.autocommit = True
            return conn
        except psycopg2.OperationalError as exc:
            if time.monotonic() > deadline:
                log(f"FATAL: cannot reach the database: {str(exc).strip()}")
                sys.exit(2)
            time.sleep(1)


def current_schema(cur) -> int:
    cur.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
               version integer PRIMARY KEY,
               app_version text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )
    cur.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
    return int(cur.fetchone()[0])


def migrate(conn) -> int:
    if VERSION not in CODE_SCHEMA:
        log(f"FATAL: unknown version {VERSION!r}")
        sys.exit(2)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(4242)")
        try:
            schema = current_schema(cur)
            if schema > MAX_SCHEMA[VERSION]:
                log(
                    f"FATAL: database schema is version {schema} but notes {VERSION} "
                    f"supports at most schema {MAX_SCHEMA[VERSION]}; restore a backup "
                    f"taken under notes {VERSION.split('.')[0]}.x or run a newer version"
                )
                sys.exit(3)
            for target in range(schema + 1, CODE_SCHEMA[VERSION] + 1):
                log(f"migrating schema {target - 1} -> {target}")
                cur.execute("BEGIN")
                for statement in MIGRATIONS[target]:
                    cur.execute(statement)
                cur.execute(
                    "INSERT INTO schema_migrations (version, app_version) VALUES (%s, %s)",
                    (target, VERSION),
                )
                cur.execute("COMMIT")
            return current_schema(cur)
        finally:
            cur.execute("SELECT pg_advisory_unlock(4242)")


def embedding(text: str) -> list[float]:
    """A toy 8-dimensional 'embedding': stable, cheap, and real data in a real column."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255.0, 4) for b in digest[:8]]


def read_config() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(os.path.join(CONFIG_DIR, "notes.ini"))
    return dict(parser["notes"]) if parser.has_section("notes") else {}


class App:
    def __init__(self) -> None:
        self.conn = connect()
        self.schema = migrate(self.conn)
        self.lock = threading.Lock()
        self.requests = 0
        self.config = read_config()

    @property
    def table(self) -> tuple[str, str]:
        return ("documents", "content") if self.schema >= 3 else ("notes", "body")

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self.lock, self.conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []

    def list_notes(self) -> list[dict]:
        table, body = self.table
        rows = self.query(f"SELECT id, title, {body} FROM {table} ORDER BY id")
        return [{"id": r[0], "title": r[1], "body": r[2]} for r in rows]

    def answer(self, question: str) -> dict:
        """Answer from the notes: the note sharing most words with the question, a quality score
        (the share of the question's words the answer covers) and its cost in tokens."""
        words = set(re.findall(r"[a-z0-9]+", question.lower()))
        best, covered = None, set()
        for note in self.list_notes():
            found = words & set(re.findall(r"[a-z0-9]+", f"{note['title']} {note['body']}".lower()))
            if len(found) > len(covered):
                best, covered = note, found
        if DEGRADED:  # a smaller model: it rambles around the question and misses the note
            text = "It depends. " * 12 + "Please check the documentation."
            covered = {w for w in words if w in text.lower()}
        else:
            text = (best["body"] or best["title"]) if best else "I do not know."
        quality = round(len(covered) / len(words), 3) if words else 0.0
        tokens = len(question.split()) + len(text.split())
        return {"answer": text, "source": best["id"] if best and not DEGRADED else None, "quality": quality,
                "usage": {"tokens": tokens}, "version": VERSION}

    def add_note(self, title: str, body: str) -> int:
        table, column = self.table
        if self.schema >= 2:
            rows = self.query(
                f"INSERT INTO {table} (title, {column}, embedding) VALUES (%s, %s, %s) RETURNING id",
                (title, body, embedding(body)),
            )
        else:
            rows = self.query(
                f"INSERT INTO {table} (title, {column}) VALUES (%s, %s) RETURNING id", (title, body)
            )
        return int(rows[0][0])


class Handler(BaseHTTPRequestHandler):
    app: App
    server_version = f"notes/{VERSION}"

    def log_message(self, fmt: str, *args) -> None:  # quiet access log
        if os.environ.get("NOTES_ACCESS_LOG"):
            super().log_message(fmt, *args)

    def reply(self, status: int, payload: dict | list) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def status_payload(self) -> dict:
        return {"version": VERSION, "schema": self.app.schema, "code_schema": CODE_SCHEMA[VERSION]}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/healthz":
            if BROKEN:
                self.reply(503, {"status": "degraded", "error": "embedding index unavailable", **self.status_payload()})
                return
            try:
                self.app.query("SELECT 1")
            except psycopg2.Error as exc:
                self.reply(503, {"status": "down", "error": str(exc).strip(), **self.status_payload()})
                return
            self.reply(200, {"status": "ok", **self.status_payload()})
        elif self.path == "/version":
            self.reply(200, {**self.status_payload(), "config": sorted(self.app.config)})
        elif self.path == "/notes":
            self.reply(200, self.app.list_notes())
        elif self.path == "/uploads":
            self.reply(200, sorted(os.listdir(UPLOADS)))
        elif self.path.startswith("/answer?") or self.path == "/answer":
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            self.reply(200, self.app.answer(query.get("q", [""])[0]))
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path == "/notes":
            with self.app.lock:
                self.app.requests += 1
                failing = BROKEN and self.app.requests % 3 == 0
            if failing:
                self.reply(500, {"error": "embedding worker crashed"})
                return
            try:
                data = json.loads(raw or b"{}")
                note_id = self.app.add_note(str(data["title"]), str(data.get("body", "")))
            except (ValueError, KeyError) as exc:
                self.reply(400, {"error": f"bad note: {exc}"})
                return
            self.reply(201, {"id": note_id})
        elif self.path.startswith("/uploads/"):
            name = self.path[len("/uploads/"):]
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", name) or name.startswith("."):
                self.reply(400, {"error": "bad file name"})
                return
            with open(os.path.join(UPLOADS, name), "wb") as handle:
                handle.write(raw)
            self.reply(201, {"file": name, "bytes": len(raw)})
        else:
            self.reply(404, {"error": "not found"})


def main() -> None:
    log("starting")
    Handler.app = App()
    port = int(os.environ.get("NOTES_LISTEN_PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    log(f"ready on :{port} (schema {Handler.app.schema})")
    server.serve_forever()


if __name__ == "__main__":
    main()
