"""A real, local Google Cloud Storage for the tests: gcp-storage-emulator behind a TLS proxy.

Three clients must reach the same buckets: TensorFlow's own GCS filesystem
(tf.io.gfile, summaries, checkpoints, TFRecords on gs://), the google-cloud-storage
Python client, and TensorBoard's EventAccumulator (which reads through tf.io.gfile).

google-cloud-storage honours STORAGE_EMULATOR_HOST, so it talks plain HTTP straight to
the emulator. TensorFlow does not: its GCS client ignores STORAGE_EMULATOR_HOST and
every endpoint variable (https://storage.googleapis.com and https://www.googleapis.com
are hard-coded). Its libcurl does honour https_proxy, no_proxy and CURL_CA_BUNDLE, and
GOOGLE_AUTH_TOKEN_FOR_TESTING makes it skip the credential lookup. So TensorFlow is
sent to a small CONNECT proxy that terminates TLS for *.googleapis.com with a CA made
here, and relays the decrypted requests to the emulator.

The proxy also smooths over what the emulator gets wrong for TensorFlow's requests:
  * bodies sent with both "Transfer-Encoding: chunked" and Content-Length would be
    stored WITH the chunk framing (the emulator believes Content-Length): the proxy
    de-chunks and forwards a plain Content-Length body;
  * "Expect: 100-continue" is never answered by the emulator, so curl stalls ~1 s per
    upload before sending the body anyway: the proxy answers it at once;
  * resumable-upload Locations come back as http://www.googleapis.com/...: the proxy
    rewrites them to https so curl's next request comes back through the proxy.
One fix has to be made inside the emulator (patched in the server process before it
serves): a zero-byte uploadType=media upload (how TensorFlow creates "dir/" markers)
crashes it, because it reads an empty body as None.

The emulator runs in memory: its on-disk mode cannot hold both objects "a/" and
"a/b/" (the first becomes a file, the second needs a folder of the same name).

Emulator and proxy share one subprocess, so a crashed or hung test never takes the
server with it, and the server exits as soon as its parent goes away (it watches its
stdin). Ports are picked by the OS and reported back, so nothing races for them.
Put GcsServer.env in place before TensorFlow first touches gs:// in a process, so that it
never goes looking for real credentials (files, then a GCE metadata server).
"""

import contextlib
import datetime
import http.client
import http.server
import json
import logging
import os
import selectors
import shutil
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from functools import partial

import pytest

BUCKET = "tunewell-test"
PROJECT = "tunewell-test-project"
STARTUP_TIMEOUT_S = 20

# Headers that describe one hop, not the message: never relayed as they are.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization",
              "transfer-encoding", "te", "trailer", "upgrade", "expect", "content-length"}


def make_certificates(folder: str) -> tuple[str, str, str]:
    """A throwaway CA and a leaf for *.googleapis.com it signed: (ca, leaf, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid_from, valid_to = now - datetime.timedelta(days=1), now + datetime.timedelta(days=7)

    def name(common_name):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("tunewell test CA")).issuer_name(name("tunewell test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid_from).not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(name("storage.googleapis.com")).issuer_name(ca_cert.subject)
        .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid_from).not_valid_after(valid_to)
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("storage.googleapis.com"),
            x509.DNSName("www.googleapis.com"),
            x509.DNSName("*.googleapis.com"),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    paths = tuple(os.path.join(folder, f) for f in ("ca.pem", "leaf.pem", "leaf-key.pem"))
    with open(paths[0], "wb") as f:
        f.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(leaf_cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(leaf_key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return paths


class GcsServer:
    """The emulator and the TLS proxy in one subprocess; a context manager.

    server.env holds what a client process needs; server.apply_env() puts it into
    os.environ of this process.
    """

    def __init__(self):
        self.folder = None
        self.process = None
        self.emulator_port = None
        self.proxy_port = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def start(self) -> "GcsServer":
        self.folder = tempfile.mkdtemp(prefix="gcs-server-")
        try:
            self.ca_path, leaf_path, key_path = make_certificates(self.folder)
            self.log_path = os.path.join(self.folder, "server.log")
            with open(self.log_path, "wb") as log:
                # stdin stays open for the server's lifetime: its end tells the server to exit.
                self.process = subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__), leaf_path, key_path],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log)
            ports = json.loads(self._read_startup_line())
            self.emulator_port, self.proxy_port = ports["emulator"], ports["proxy"]
            self._check_answers()
        except BaseException:
            self.stop()
            raise
        return self

    def _read_startup_line(self) -> str:
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(STARTUP_TIMEOUT_S):
                raise RuntimeError(f"GCS server did not start:\n{self._log()}")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"GCS server exited at startup:\n{self._log()}")
        return line.decode()

    def _check_answers(self):
        """One request straight to the emulator, one over TLS through the proxy."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.emulator_port}/", timeout=5) as r:
            assert r.read() == b"OK"
        tls = ssl.create_default_context(cafile=self.ca_path)
        conn = http.client.HTTPSConnection("127.0.0.1", self.proxy_port, context=tls, timeout=5)
        conn.set_tunnel("storage.googleapis.com", 443)
        try:
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"OK"
        finally:
            conn.close()

    def _log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.process is not None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process.stdout.close()
            self.process = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    @property
    def env(self) -> dict[str, str]:
        proxy = f"http://127.0.0.1:{self.proxy_port}"
        local = "127.0.0.1,localhost"
        return {
            # TensorFlow (libcurl): every https request goes through the proxy, which
            # presents certificates signed by this CA ...
            "https_proxy": proxy,
            "HTTPS_PROXY": proxy,
            "CURL_CA_BUNDLE": self.ca_path,
            # ... except local traffic, such as google-cloud-storage's to the emulator.
            "no_proxy": local,
            "NO_PROXY": local,
            # TensorFlow sends this as its bearer token instead of looking for credentials.
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "tunewell-test-token",
            # google-cloud-storage: the emulator's address; with it, anonymous credentials.
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{self.emulator_port}",
            "GOOGLE_CLOUD_PROJECT": PROJECT,
            # Should anything still call google.auth.default(), it fails at once instead
            # of probing for a GCE metadata server (google-auth wants lowercase "true").
            "NO_GCE_CHECK": "true",
        }

    def apply_env(self):
        os.environ.update(self.env)

    def create_bucket(self, name: str):
        """Create a bucket (already having it is fine)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.emulator_port}/storage/v1/b?project={PROJECT}",
            data=json.dumps({"name": name}).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except urllib.error.HTTPError as err:
            if err.code != 409:
                raise


@pytest.fixture(scope="session")
def gcs_server():
    """The session's GCS, its environment in os.environ, with the bucket tunewell-test."""
    saved = dict(os.environ)
    with GcsServer() as server:
        server.apply_env()
        server.create_bucket(BUCKET)
        try:
            yield server
        finally:
            os.environ.clear()
            os.environ.update(saved)


# ---- Everything below runs in the server subprocess. ----

def patch_emulator():
    """Let the emulator store zero-byte uploadType=media uploads instead of crashing."""
    from gcp_storage_emulator.handlers import objects

    media_upload = objects._media_upload

    def media_upload_allowing_empty(request, response, storage):
        if request.data is None:  # how the emulator reads an empty body
            request._data = b""
        return media_upload(request, response, storage)

    objects._media_upload = media_upload_allowing_empty


class EmulatorServer(http.server.HTTPServer):
    # The emulator serves one request at a time while TensorFlow may open many
    # connections at once (parallel reads): past the default backlog of 5, a
    # dropped connection attempt costs the client a 1 s SYN retry.
    request_queue_size = 64


class ThreadingProxy(socketserver.ThreadingTCPServer):
    daemon_threads = True


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    """CONNECT, then TLS as *.googleapis.com, then every request relayed to the emulator."""

    protocol_version = "HTTP/1.1"  # keep-alive, and Expect: 100-continue answered at once
    disable_nagle_algorithm = True  # headers and body go out as separate small writes
    tls_context: ssl.SSLContext
    emulator_port: int

    def do_CONNECT(self):
        host = self.path.rsplit(":", 1)[0]
        if not host.endswith(".googleapis.com"):
            # No internet here: refuse at once rather than let a client time out.
            self.send_error(403, f"this test proxy only serves *.googleapis.com, not {host}")
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        # From here on the same handler loop reads the client's requests from the tunnel:
        # setup() makes rfile and (unbuffered, so 100 Continue goes out) wfile again.
        self.request = self.tls_context.wrap_socket(self.connection, server_side=True)
        self.setup()
        self.close_connection = False  # even after an HTTP/1.0 CONNECT (Python's client)

    def relay(self):
        if not isinstance(self.connection, ssl.SSLSocket):
            self.send_error(405, "only CONNECT tunnels are served")
            return
        body = self.read_body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection("127.0.0.1", self.emulator_port, timeout=60)
        try:
            upstream.request(self.command, self.path, body, headers)
            response = upstream.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as err:
            # The emulator drops the connection when one of its handlers raises.
            self.send_error(502, f"emulator failed: {err!r}")
            return
        finally:
            upstream.close()
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() in HOP_BY_HOP or key.lower() in ("server", "date"):
                continue
            if key.lower() == "location":
                value = value.replace("http://", "https://", 1)
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = relay

    def read_body(self) -> bytes:
        # Transfer-Encoding wins over Content-Length (RFC 9112 6.3); the emulator gets
        # this backwards, which is why the body is decoded here.
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, format, *args):
        pass  # one line per request would drown the log that startup failures print


def serve(leaf_path: str, key_path: str):
    """Start emulator and proxy, print their ports as one JSON line, run until stdin ends."""
    from gcp_storage_emulator.server import RequestHandler
    from gcp_storage_emulator.storage import Storage

    # The emulator logs a warning for every JSON response; keep its errors only.
    logging.basicConfig(level=logging.ERROR)
    patch_emulator()
    storage = Storage(use_memory_fs=True)
    emulator = EmulatorServer(("127.0.0.1", 0), partial(RequestHandler, storage))

    ProxyHandler.tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ProxyHandler.tls_context.load_cert_chain(leaf_path, key_path)
    ProxyHandler.emulator_port = emulator.server_address[1]
    proxy = ThreadingProxy(("127.0.0.1", 0), ProxyHandler)

    for server in (emulator, proxy):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps({"emulator": emulator.server_address[1],
                      "proxy": proxy.server_address[1]}), flush=True)
    sys.stdin.buffer.read()  # returns when the parent closes the pipe or dies


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        serve(*sys.argv[1:])
