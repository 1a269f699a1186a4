"""The ``scrypt`` file format (Tarsnap's ``scrypt enc``/``scrypt dec``), which Qubes'
backup format 4 uses for each part: encryption and integrity in one.

Invariant: nothing decrypted is handed out before it is authenticated. A part is
a 96-byte header (magic ``scrypt``, version 0, log2 N, r, p, a 32-byte salt, a
SHA-256 check of those 48 bytes, an HMAC-SHA256 of the first 64), the data
encrypted with AES-256-CTR, and an HMAC-SHA256 of header and ciphertext. Both keys
come from scrypt(passphrase, salt): the first 32 bytes for AES, the next 32 for
HMAC. :func:`decrypt` checks the header's HMAC (a wrong passphrase is said as
such) and the whole part's HMAC before it writes any plaintext out, so a
tampered or truncated part yields nothing.

Written here from the format's description; the suite checks it against the
``scrypt`` tool both ways.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import tempfile
from typing import IO, Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from qubes_core import exc

MAGIC = b"scrypt\x00"
HEADER_SIZE = 96
TRAILER_SIZE = 32
BLOCK = 1024 * 1024
# scrypt cost: 2**17 x 128 x 8 bytes = 128 MiB and about a third of a second per part
# on this kind of machine (Qubes' tool tunes itself to about 5 s).
DEFAULT_LOG_N = 17
DEFAULT_R = 8
DEFAULT_P = 1
# Refused above this when reading (a hostile header could ask for any amount).
MAX_LOG_N = 22
MAX_MEMORY = 1024 * 1024 * 1024 + 1024 * 1024


class Readable(Protocol):
    """What :func:`encrypt` reads from: a file, a pipe, or a wrapper of one."""

    def read(self, size: int = -1, /) -> bytes: ...


class ScryptError(exc.QubesException):
    """A part that is not in the scrypt format, was altered, or needs another passphrase."""


def _keys(passphrase: bytes, salt: bytes, log_n: int, r: int, p: int) -> tuple[bytes, bytes]:
    if not 1 <= log_n <= MAX_LOG_N or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise ScryptError(f"scrypt parameters out of range (logN={log_n}, r={r}, p={p})")
    derived = hashlib.scrypt(passphrase, salt=salt, n=2**log_n, r=r, p=p,
                             maxmem=MAX_MEMORY, dklen=64)
    return derived[:32], derived[32:]


def _aes(key: bytes) -> Cipher[modes.CTR]:
    return Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16))


def encrypt(source: Readable, target: IO[bytes], passphrase: bytes, limit: int | None = None,
            log_n: int | None = None) -> int:
    """Encrypt up to ``limit`` bytes of ``source`` (all of it if None) into ``target``
    with scrypt cost 2**``log_n`` (:data:`DEFAULT_LOG_N` if None); the number of
    plaintext bytes read (0 at the end of ``source``: nothing written)."""
    log_n = DEFAULT_LOG_N if log_n is None else log_n
    first = source.read(BLOCK if limit is None else min(BLOCK, limit))
    if not first:
        return 0
    salt = os.urandom(32)
    aes_key, hmac_key = _keys(passphrase, salt, log_n, DEFAULT_R, DEFAULT_P)
    head = MAGIC[:6] + bytes([0, log_n]) + struct.pack(">II", DEFAULT_R, DEFAULT_P) + salt
    head += hashlib.sha256(head).digest()[:16]
    head += hmac.new(hmac_key, head, hashlib.sha256).digest()
    mac = hmac.new(hmac_key, head, hashlib.sha256)
    encryptor = _aes(aes_key).encryptor()
    target.write(head)
    done = 0
    block = first
    while block:
        done += len(block)
        data = encryptor.update(block)
        mac.update(data)
        target.write(data)
        if limit is not None and done >= limit:
            break
        block = source.read(BLOCK if limit is None else min(BLOCK, limit - done))
    tail = encryptor.finalize()
    mac.update(tail)
    target.write(tail + mac.digest())
    return done


def _header_keys(head: bytes, passphrase: bytes, what: str) -> tuple[bytes, bytes]:
    if len(head) < HEADER_SIZE or head[:7] != MAGIC:
        raise ScryptError(f"{what}: not an encrypted backup part (no scrypt header)")
    log_n = head[7]
    r, p = struct.unpack(">II", head[8:16])
    if hashlib.sha256(head[:48]).digest()[:16] != head[48:64]:
        raise ScryptError(f"{what}: the scrypt header is damaged")
    aes_key, hmac_key = _keys(passphrase, head[16:48], log_n, r, p)
    if not hmac.compare_digest(hmac.new(hmac_key, head[:64], hashlib.sha256).digest(),
                               head[64:96]):
        raise ScryptError(f"{what}: wrong passphrase (or a part of another backup)")
    return aes_key, hmac_key


def decrypt(source: IO[bytes], size: int, target: IO[bytes], passphrase: bytes,
            what: str = "backup part") -> int:
    """Authenticate the ``size``-byte part in ``source``, then write its plaintext to
    ``target``; the number of plaintext bytes. Nothing is written unless the whole
    part is authentic (it is read twice: once to check, once to decrypt)."""
    if size < HEADER_SIZE + TRAILER_SIZE:
        raise ScryptError(f"{what}: too short to be an encrypted backup part")
    start = source.tell()
    head = source.read(HEADER_SIZE)
    aes_key, hmac_key = _header_keys(head, passphrase, what)
    mac = hmac.new(hmac_key, head, hashlib.sha256)
    remaining = size - HEADER_SIZE - TRAILER_SIZE
    while remaining:
        block = source.read(min(BLOCK, remaining))
        if not block:
            raise ScryptError(f"{what}: truncated")
        mac.update(block)
        remaining -= len(block)
    if not hmac.compare_digest(mac.digest(), source.read(TRAILER_SIZE)):
        raise ScryptError(f"{what}: altered or truncated (its HMAC does not match)")
    source.seek(start + HEADER_SIZE)
    decryptor = _aes(aes_key).decryptor()
    remaining = size - HEADER_SIZE - TRAILER_SIZE
    while remaining:
        block = source.read(min(BLOCK, remaining))
        remaining -= len(block)
        target.write(decryptor.update(block))
    target.write(decryptor.finalize())
    source.seek(start + size)
    return size - HEADER_SIZE - TRAILER_SIZE


def decrypt_bytes(data: bytes, passphrase: bytes, what: str = "backup part") -> bytes:
    """:func:`decrypt` of a small part held in memory."""
    with tempfile.TemporaryFile() as source, tempfile.TemporaryFile() as target:
        source.write(data)
        source.seek(0)
        decrypt(source, len(data), target, passphrase, what)
        target.seek(0)
        return target.read()
