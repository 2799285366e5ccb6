"""A local HTTP server on 127.0.0.1 (or another loopback address) for ingest tests and the ingest benchmark.

Serves synthetic images (curate.synth scenes) at /img/N.jpg and answers the faults a web crawl
meets at the other paths (FAULTS: path -> the reason the row must end with). Runs in a thread of
the test process; ``python tests/ingest_server.py --port P`` runs it alone (the ingest benchmark).

Politeness tests run one server per loopback address (127.0.0.1, 127.0.0.2, ... are distinct
hosts): ``log`` holds every request (path, arrival, and when its answer was about to be sent:
the client may start its next request as soon as it has read it), ``max_active`` the most requests
served at once; ``robots`` and ``tdmrep`` set what /robots.txt and /.well-known/tdmrep.json answer.
``hits`` counts requests per path except those two site files (what a row's download asked for).
"""
from __future__ import annotations

import argparse
import http.server
import struct
import threading
import time
import zlib

from curate import synth

# path -> reason recorded for its row (None: downloads fine)
FAULTS = {
    "/404": "http_404",
    "/500": "http_500",
    "/slow": "timeout",                        # answers after SLOW_SECONDS, beyond the test timeout
    "/trickle": "timeout",                     # headers at once, then a byte at a time past the deadline
    "/redirect": None,                         # 302 -> /img/0.jpg
    "/redirect-chain": None,                   # 301 -> 307 -> /img/1.jpg
    "/html": "wrong_content_type",             # image bytes labelled text/html
    "/corrupt": "undecodable_image",           # image/jpeg that is not a JPEG
    "/bomb": "decompression_bomb",             # a PNG header declaring 12000 x 12000 pixels
    "/noai": "opted_out",                      # X-Robots-Tag: noai
    "/noimageindex-other-bot": None,           # X-Robots-Tag for another user agent only
    "/to-private": "refused_private_address",  # 302 -> http://169.254.169.254/ (cloud metadata)
    "/to-ftp": "refused_scheme",               # 302 -> ftp://
    "/to-file": "refused_scheme",              # 302 -> file:///etc/passwd (urllib's own refusal reads as a 302)
    "/to-gopher": "refused_scheme",            # 302 -> gopher://
    "/to-credentials": "refused_credentials",  # 302 -> http://user:secret@127.0.0.1/... (never sent)
    "/space in path.jpg": None,                # sent as /space%20in%20path.jpg, as browsers do
    "/crlf.jpg\r\nX-Injected: yes": "bad_url", # CR/LF would inject a header: never sent
    "/huge": "too_large",                      # Content-Length above the byte cap
    "/loop": "redirect_error",                 # redirects to itself
}
SITE_FILES = ("/robots.txt", "/.well-known/tdmrep.json")
SLOW_SECONDS = 4.0
SLOW_IMAGE_SECONDS = 0.2


def image_bytes(index: int, size: tuple[int, int] | None = None) -> bytes:
    """A rendered synthetic scene as JPEG, a pure function of ``index``."""
    rng = synth.sample_rng(99, index)
    groups = synth.make_scene(rng)
    img = synth.render(groups, size or synth.CANVASES[index % len(synth.CANVASES)], rng)
    return synth.encode_jpeg(img, 90)


def image_caption(index: int) -> str:
    """The English caption that describes image_bytes(index)."""
    return synth.caption(synth.make_scene(synth.sample_rng(99, index)), "en")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height; its data is a few bytes (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: bytes = b"", ctype: str = "image/jpeg", headers: dict | None = None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self._finish()
        self.wfile.write(body)

    def _finish(self):
        """The request counts as served once its answer is about to go out: the client may start
        its next request as soon as it has the body, before this thread runs again."""
        if self._started is None:
            return
        srv = self.server
        with srv.lock:
            srv.active -= 1
            srv.log.append((self.path.split("?")[0], self._started, time.monotonic()))
        self._started = None

    def _redirect(self, code: int, location: str):
        self.send_response(code)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        srv, path = self.server, self.path.split("?")[0]
        self._started = time.monotonic()
        with srv.lock:
            if path not in SITE_FILES:
                srv.hits[path] = srv.hits.get(path, 0) + 1
            srv.active += 1
            srv.max_active = max(srv.max_active, srv.active)
            count = srv.hits.get(path, 0)
        try:
            self._answer(srv, path, count)
        finally:
            self._finish()

    def _site_file(self, answer, ctype: str):
        """None: 404; an int: that status; "hang": no answer within SLOW_SECONDS; text: 200."""
        if answer is None:
            self._send(404, b"none", "text/plain")
        elif isinstance(answer, int):
            self._send(answer, b"status", "text/plain")
        elif answer == "hang":
            time.sleep(SLOW_SECONDS)
            self._send(503, b"late", "text/plain")
        else:
            self._send(200, answer.encode(), ctype)

    def _answer(self, srv, path: str, count: int):
        try:
            if path == "/robots.txt":
                self._site_file(srv.robots, "text/plain")
            elif path == "/.well-known/tdmrep.json":
                self._site_file(srv.tdmrep, "application/json")
            elif path.startswith("/hold/"):  # an image after srv.hold seconds: requests overlap
                time.sleep(srv.hold)
                self._send(200, srv.image(int(path.rsplit("/", 1)[1].split(".")[0])))
            elif path.startswith("/flap/"):
                # /flap/CODE/K/RA/N.jpg: the first K requests answer CODE (Retry-After: RA unless "-"),
                # then image N
                _, _, code, k, ra, name = path.split("/")
                if count <= int(k):
                    self._send(int(code), b"busy", "text/plain", headers={} if ra == "-" else {
                        "Retry-After": ra.replace("_", " ")})
                else:
                    self._send(200, srv.image(int(name.split(".")[0])))
            elif path.startswith("/tdm/"):  # an image whose response reserves TDM rights
                self._send(200, srv.image(int(path.rsplit("/", 1)[1].split(".")[0])),
                           headers={"tdm-reservation": "1", "tdm-policy": "https://example.test/policy.json"})
            elif path.startswith("/img/"):
                index = int(path[len("/img/"):].split(".")[0])
                self._send(200, srv.image(index))
            elif path.startswith("/img-slow/"):  # an image after SLOW_IMAGE_SECONDS: keeps a shard in progress
                time.sleep(SLOW_IMAGE_SECONDS)
                self._send(200, srv.image(int(path[len("/img-slow/"):].split(".")[0])))
            elif path.startswith("/flaky/"):  # 503 while the server's flaky switch is on
                index = int(path[len("/flaky/"):].split(".")[0])
                if srv.flaky:
                    self._send(503, b"busy", "text/plain")
                else:
                    self._send(200, srv.image(index))
            elif path == "/404":
                self._send(404, b"not found", "text/plain")
            elif path == "/500":
                self._send(500, b"error", "text/plain")
            elif path == "/slow":
                time.sleep(SLOW_SECONDS)
                self._send(200, srv.image(0))
            elif path == "/trickle":
                body = srv.image(0)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.2)
                    if srv.stopping.is_set():
                        return
            elif path == "/redirect":
                self._redirect(302, "/img/0.jpg")
            elif path == "/redirect-chain":
                self._redirect(301, "/redirect-chain-2")
            elif path == "/redirect-chain-2":
                self._redirect(307, "/img/1.jpg")
            elif path == "/html":
                self._send(200, srv.image(2), "text/html; charset=utf-8")
            elif path == "/corrupt":
                self._send(200, b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, "image/jpeg")
            elif path == "/bomb":
                self._send(200, png_header_only(12000, 12000), "image/png")
            elif path == "/noai":
                self._send(200, srv.image(3), headers={"X-Robots-Tag": "noai"})
            elif path == "/noimageindex-other-bot":
                self._send(200, srv.image(4), headers={"X-Robots-Tag": "otherbot: noimageindex"})
            elif path == "/to-private":
                self._redirect(302, "http://169.254.169.254/latest/meta-data/")
            elif path == "/to-ftp":
                self._redirect(302, "ftp://127.0.0.1/x.jpg")
            elif path == "/to-file":
                self._redirect(302, "file:///etc/passwd")
            elif path == "/to-gopher":
                self._redirect(302, "gopher://127.0.0.1:70/1")
            elif path == "/to-credentials":
                self._redirect(302, f"http://user:secret@127.0.0.1:{srv.server_address[1]}/img/0.jpg")
            elif path == "/space%20in%20path.jpg":
                self._send(200, srv.image(5))
            elif path == "/huge":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(10 ** 10))
                self.end_headers()
            elif path == "/loop":
                self._redirect(302, "/loop")
            else:
                self._send(404, b"no such path", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeouts, refusals): expected


class FaultServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0, image_size: tuple[int, int] | None = None, host: str = "127.0.0.1"):
        super().__init__((host, port), Handler)
        self.lock, self.hits, self.flaky = threading.Lock(), {}, True
        self.log, self.active, self.max_active, self.hold = [], 0, 0, 0.2
        self.robots, self.tdmrep = None, None
        self.stopping = threading.Event()
        self._size, self._cache, self.pool = image_size, {}, 0

    def image(self, index: int) -> bytes:
        if self.pool:  # benchmark: a few distinct images serve any number of URLs
            index %= self.pool
        if index not in self._cache:
            self._cache[index] = image_bytes(index, self._size)
        return self._cache[index]

    @property
    def base(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()  # quick shutdown
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        self.shutdown()
        self.server_close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pool", type=int, default=100, help="distinct images: /img/N serves image N mod pool")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    args = ap.parse_args(argv)
    server = FaultServer(args.port, (args.width, args.height))
    server.pool = args.pool
    for i in range(args.pool):
        server.image(i)
    print(f"serving on {server.base}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
