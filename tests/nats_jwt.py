"""Just enough NATS decentralised auth for a test hub: nkeys, signed JWTs, a ``.creds`` file.

An operator signs an account, the account signs a user; the hub runs in operator mode with
the account preloaded (``resolver: MEMORY``), and the user's ``.creds`` is what a leaf node
presents. Ed25519 is the RFC 8032 reference algorithm in pure Python (slow, but a handful of
signatures is all a test needs), so no crypto package is required.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time

# -- Ed25519 (RFC 8032, section 6) -------------------------------------------------------------

_P = 2**255 - 19
_Q = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P


def _inv(x: int) -> int:
    return pow(x, _P - 2, _P)


def _recover_x(y: int, sign: int) -> int:
    x2 = (y * y - 1) * _inv(_D * y * y + 1)
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
    return _P - x if (x & 1) != sign else x


_GY = 4 * _inv(5) % _P
_GX = _recover_x(_GY, 0)
_G = (_GX, _GY, 1, _GX * _GY % _P)


def _add(p1: tuple, p2: tuple) -> tuple:
    a = (p1[1] - p1[0]) * (p2[1] - p2[0]) % _P
    b = (p1[1] + p1[0]) * (p2[1] + p2[0]) % _P
    c = 2 * p1[3] * p2[3] * _D % _P
    d = 2 * p1[2] * p2[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(s: int, point: tuple) -> tuple:
    out = (0, 1, 1, 0)
    while s:
        if s & 1:
            out = _add(out, point)
        point = _add(point, point)
        s >>= 1
    return out


def _compress(point: tuple) -> bytes:
    zinv = _inv(point[2])
    x, y = point[0] * zinv % _P, point[1] * zinv % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _expand(seed: bytes) -> tuple[int, bytes]:
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return a, h[32:]


def public_key(seed: bytes) -> bytes:
    return _compress(_mul(_expand(seed)[0], _G))


def sign(seed: bytes, message: bytes) -> bytes:
    a, prefix = _expand(seed)
    pub = _compress(_mul(a, _G))
    r = int.from_bytes(hashlib.sha512(prefix + message).digest(), "little") % _Q
    big_r = _compress(_mul(r, _G))
    h = int.from_bytes(hashlib.sha512(big_r + pub + message).digest(), "little") % _Q
    return big_r + ((r + h * a) % _Q).to_bytes(32, "little")


# -- nkeys ---------------------------------------------------------------------------------

_PREFIX = {"operator": 14 << 3, "account": 0, "user": 20 << 3}
_SEED = 18 << 3


def _crc16(data: bytes) -> bytes:
    return binascii.crc_hqx(data, 0).to_bytes(2, "little")


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw + _crc16(raw)).decode().rstrip("=")


class NKey:
    """A new key pair of one kind (operator, account, user)."""

    def __init__(self, kind: str) -> None:
        self.raw_seed = os.urandom(32)
        prefix = _PREFIX[kind]
        self.public = _b32(bytes([prefix]) + public_key(self.raw_seed))
        self.seed = _b32(bytes([_SEED | prefix >> 5, (prefix & 31) << 3]) + self.raw_seed)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def jwt(issuer: NKey, subject: NKey, name: str, nats: dict) -> str:
    """A NATS JWT (v2) for ``subject``, signed by ``issuer``."""
    claims = {
        "jti": _b64(os.urandom(24)),
        "iat": int(time.time()),
        "iss": issuer.public,
        "name": name,
        "sub": subject.public,
        "nats": {**nats, "version": 2},
    }
    head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = sign(issuer.raw_seed, f"{head}.{body}".encode())
    return f"{head}.{body}.{_b64(signature)}"


UNLIMITED = {"subs": -1, "data": -1, "payload": -1}


def operator_setup(account_name: str = "EDGE") -> tuple[str, str, str]:
    """Hub config text for operator mode with one preloaded account, a user's .creds, and
    the account's public key."""
    operator, account, user = NKey("operator"), NKey("account"), NKey("user")
    limits = {**UNLIMITED, "imports": -1, "exports": -1, "wildcards": True, "conn": -1}
    limits["leaf"] = -1
    account_jwt = jwt(operator, account, account_name, {"type": "account", "limits": limits})
    user_claims = {"type": "user", "pub": {}, "sub": {}, **UNLIMITED}
    user_jwt = jwt(account, user, "leaf", user_claims)
    conf = "\n".join(
        [
            f'operator: "{jwt(operator, operator, "test-op", {"type": "operator"})}"',
            "resolver: MEMORY",
            f'resolver_preload: {{ {account.public}: "{account_jwt}" }}',
        ]
    )
    creds = (
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user.seed}\n------END USER NKEY SEED------\n"
    )
    return conf, creds, account.public
