"""Who may talk to a server: CurveZMQ encryption plus authentication by key pairs (pyzmq's zmq.auth).

Key files are zmq's certificate format (`vla keys generate --out keys --name robot-server`):
    keys/robot-server.key          public key: give it to clients (and, for a client key, to the server's allow-list)
    keys/robot-server.key_secret   secret key: stays on the machine that owns it

A server with keys (`server_secret_key`) accepts only clients whose public key is in `authorized_keys` (one
.key file, or a directory of them); any other client fails the handshake: its messages never reach the server
and it gets no reply. A non-loopback bind without keys is refused unless `insecure=True`.
"""

from __future__ import annotations

import glob
import ipaddress
import logging
import os
from dataclasses import dataclass

import zmq

log = logging.getLogger("robot_bridge.security")
ZAP_DOMAIN = "vla"  # the authenticator answers for this domain only


class KeyFileError(ValueError):
    """A key file is missing, unreadable or of the wrong kind (public where a secret key is needed)."""


def is_loopback(endpoint: str) -> bool:
    """tcp://127.x / [::1] / localhost, ipc:// and inproc:// never leave the machine."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", interface names, hostnames


def check_bind(endpoint: str, secured: bool, insecure: bool, what: str = "bind") -> None:
    if not is_loopback(endpoint) and not secured and not insecure:
        raise ValueError(f"{what}: {endpoint} is reachable from other machines and no server key is set; give "
                         f"--server-key and --authorized-keys (CurveZMQ; `vla keys generate`), or --insecure to "
                         f"accept commands from anyone on the network")


def generate_keypair(directory: str, name: str) -> tuple[str, str]:
    """Write <directory>/<name>.key and <name>.key_secret; refuses to overwrite. Returns (public, secret) paths."""
    if not name or os.sep in name or name.startswith("."):
        raise ValueError(f"name: expected a plain file name, got {name!r}")
    os.makedirs(directory, exist_ok=True)
    pub, sec = os.path.join(directory, f"{name}.key"), os.path.join(directory, f"{name}.key_secret")
    for p in (pub, sec):
        if os.path.exists(p):
            raise FileExistsError(f"{p} exists; remove it or choose another --name")
    import zmq.auth

    pub, sec = zmq.auth.create_certificates(directory, name)
    os.chmod(sec, 0o600)
    return pub, sec


def load_public(path: str) -> bytes:
    import zmq.auth

    if not os.path.isfile(path):
        raise KeyFileError(f"public key file {path!r} not found")
    try:
        public, _ = zmq.auth.load_certificate(path)
    except Exception as e:  # noqa: BLE001 - zmq raises ValueError/OSError/... on a malformed file
        raise KeyFileError(f"{path}: not a zmq certificate ({e})") from e
    return public


def load_secret(path: str) -> tuple[bytes, bytes]:
    """-> (public, secret) from a .key_secret file."""
    import zmq.auth

    if not os.path.isfile(path):
        raise KeyFileError(f"secret key file {path!r} not found")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except Exception as e:  # noqa: BLE001
        raise KeyFileError(f"{path}: not a zmq certificate ({e})") from e
    if not secret:
        raise KeyFileError(f"{path}: holds no secret key; expected the .key_secret file of a key pair")
    return public, secret


def load_authorized(path: str) -> set[bytes]:
    """Public keys (z85) from one .key file or every *.key file in a directory."""
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.key")))
        if not files:
            raise KeyFileError(f"authorized keys: no *.key files in directory {path!r}")
    elif os.path.isfile(path):
        files = [path]
    else:
        raise KeyFileError(f"authorized keys {path!r}: not a file or directory")
    return {load_public(f) for f in files}


@dataclass(frozen=True)
class ServerKeys:
    secret_key: str  # path of the server's .key_secret
    authorized_keys: str  # path of a client .key file or a directory of them

    @classmethod
    def from_args(cls, secret_key: str | None, authorized_keys: str | None) -> "ServerKeys | None":
        if secret_key is None and authorized_keys is None:
            return None
        if secret_key is None or authorized_keys is None:
            raise ValueError("server keys: give both --server-key (the server's .key_secret) and --authorized-keys "
                             "(client .key file or directory)")
        return cls(secret_key, authorized_keys)


class _AllowList:
    def __init__(self, keys: set[bytes]):
        self.keys = keys
        self.denied = 0

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.keys
        if not ok:
            self.denied += 1
            log.warning("refused a client with an unknown public key %s", key.decode(errors="replace"))
        return ok


class ServerAuth:
    """Runs zmq's ThreadAuthenticator on a context and makes sockets Curve servers with the allow-list."""

    def __init__(self, ctx: zmq.Context, keys: ServerKeys):
        from zmq.auth.thread import ThreadAuthenticator

        self.public, self.secret = load_secret(keys.secret_key)
        self.allow = _AllowList(load_authorized(keys.authorized_keys))
        self.auth = ThreadAuthenticator(ctx)
        self.auth.start()
        self.auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self.allow)

    def secure(self, sock: zmq.Socket) -> None:
        """Call before bind()."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        sock.zap_domain = ZAP_DOMAIN.encode()

    @property
    def denied(self) -> int:
        return self.allow.denied

    def stop(self) -> None:
        self.auth.stop()


@dataclass(frozen=True)
class ClientKeys:
    secret_key: str  # this client's .key_secret
    server_public_key: str  # the server's .key

    @classmethod
    def from_args(cls, secret_key: str | None, server_public_key: str | None) -> "ClientKeys | None":
        if secret_key is None and server_public_key is None:
            return None
        if secret_key is None or server_public_key is None:
            raise ValueError("client keys: give both the client's .key_secret and the server's public .key")
        return cls(secret_key, server_public_key)

    def secure(self, sock: zmq.Socket) -> None:
        """Call before connect()."""
        public, secret = load_secret(self.secret_key)
        sock.curve_secretkey = secret
        sock.curve_publickey = public
        sock.curve_serverkey = load_public(self.server_public_key)
