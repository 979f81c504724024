"""vectors: a small embedded vector store for the selfhost.rollback test bed.

Its data is what many self-hosted AI tools keep in one volume: one SQLite file (the items)
plus one index file per item, in the format of the version that wrote it. Two versions,
baked into each image (VECTORS_VERSION):

* 1 writes index format 1 (JSON) and SQLite user_version 1;
* 2 rewrites every index file into format 2 on start and sets user_version 2. Version 1
  still starts on format-2 data and answers its heartbeat, but reads no item: the failure
  a rollback that kept today's data would leave behind.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import struct
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = int(os.environ.get("VECTORS_VERSION", "1"))
DATA = os.environ.get("VECTORS_DATA", "/data")
DB = os.path.join(DATA, "store.db")
INDEX = os.path.join(DATA, "index")


def log(message: str) -> None:
    print(f"vectors {VERSION}: {message}", file=sys.stderr, flush=True)


def embed(text: str) -> list[float]:
    """A toy embedding: letter frequencies (enough to tell formats and items apart)."""
    counts = [0.0] * 26
    for char in text.lower():
        if "a" <= char <= "z":
            counts[ord(char) - 97] += 1.0
    return counts


def encode(vector: list[float]) -> bytes:
    if VERSION == 1:
        return json.dumps({"format": 1, "vector": vector}).encode()
    return b"F2" + base64.b64encode(struct.pack(f"<{len(vector)}f", *vector))


def decode(raw: bytes) -> list[float]:
    if VERSION == 1:
        data = json.loads(raw)  # format 2 is not JSON: ValueError
        if data.get("format") != 1:
            raise ValueError("not format 1")
        return data["vector"]
    if not raw.startswith(b"F2"):
        raise ValueError("not format 2")
    packed = base64.b64decode(raw[2:])
    return list(struct.unpack(f"<{len(packed) // 4}f", packed))


def connect() -> sqlite3.Connection:
    os.makedirs(INDEX, exist_ok=True)
    conn = sqlite3.connect(DB, check_same_thread=False, isolation_level=None)
    conn.execute("pragma journal_mode=wal")
    conn.execute("create table if not exists items (id integer primary key, text text not null)")
    on_disk = conn.execute("pragma user_version").fetchone()[0]
    if on_disk == 0:
        conn.execute(f"pragma user_version = {VERSION}")
    elif on_disk < VERSION:
        log(f"migrating the index from format {on_disk} to {VERSION}")
        for (item_id, text) in conn.execute("select id, text from items").fetchall():
            write_index(item_id, embed(text))
        conn.execute(f"pragma user_version = {VERSION}")
    elif on_disk > VERSION:
        log(f"the index is format {on_disk}, this version reads {VERSION}; starting anyway")
    return conn


def write_index(item_id: int, vector: list[float]) -> None:
    path = os.path.join(INDEX, f"{item_id}.vec")
    with open(path + ".tmp", "wb") as handle:
        handle.write(encode(vector))
    os.replace(path + ".tmp", path)


def read_index(item_id: int) -> list[float] | None:
    try:
        with open(os.path.join(INDEX, f"{item_id}.vec"), "rb") as handle:
            return decode(handle.read())
    except (OSError, ValueError, struct.error):
        return None


class Handler(BaseHTTPRequestHandler):
    conn: sqlite3.Connection

    def log_message(self, *_args) -> None:
        pass

    def reply(self, status: int, body) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:
        path, _mark, query = self.path.partition("?")
        if path == "/healthz":
            self.reply(200, {"status": "ok", "version": VERSION})
        elif path == "/items":
            rows = self.conn.execute("select id, text from items order by id").fetchall()
            self.reply(200, [{"id": i, "text": t, "readable": read_index(i) is not None} for i, t in rows])
        elif path == "/search":
            word = query.partition("=")[2].lower()
            found = []
            for item_id, text in self.conn.execute("select id, text from items order by id").fetchall():
                vector = read_index(item_id)
                if vector is None:
                    self.reply(500, {"error": f"index of item {item_id} is unreadable"})
                    return
                if word in text.lower():
                    found.append(item_id)
            self.reply(200, {"ids": found})
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        if self.path != "/items":
            self.reply(404, {"error": "not found"})
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        texts = body["texts"] if "texts" in body else [body["text"]]
        ids = []
        for text in texts:
            item_id = self.conn.execute("insert into items (text) values (?)", (text,)).lastrowid
            write_index(item_id, embed(text))
            ids.append(item_id)
        self.reply(201, {"ids": ids})


def main() -> None:
    Handler.conn = connect()
    server = ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("VECTORS_PORT", "8080"))), Handler)
    log("ready")
    server.serve_forever()


if __name__ == "__main__":
    main()
