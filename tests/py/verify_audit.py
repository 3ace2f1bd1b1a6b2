"""An independent verifier of Keyward's audit export, signed checkpoint and job log bundle.

Written from the formats' public descriptions, not from Keyward's code, so the broker does not
vouch for itself (test review M3):

- RFC 6962 §2.1 Merkle tree hash: leaf = SHA-256(0x00 || entry), node = SHA-256(0x01 || l || r),
  split at the largest power of two below n; the leaf bytes are the entry's canonical JSON
  (RFC 8785 style, docs/audit.md "Entries");
- C2SP tlog-checkpoint in a C2SP signed note, Ed25519 (signature type 0x01); verifier key
  `<name>+<hex key ID>+<base64(0x01 || public key)>`, key ID = SHA-256(name || "\n" || 0x01 ||
  public key)[:4] (docs/audit.md "Checkpoints");
- the log bundle `keyward-log-bundle/1` (docs/agents.md "Logs"): per lease a hash chain of chunks,
  each digest SHA-256 over the domain tag and length-prefixed fields (the layout documented in
  proto/src/logs.rs), each digest signed ECDSA P-256 / SHA-256 (DER) by an agent certificate that
  chains to the agent CA and was valid when the chunk arrived; each sealed head must be the one
  the job's `job.finished` entry carries inside the verified log.

Usage: verify_audit.py EXPORT CHECKPOINT PUBLIC_KEY [BUNDLE CA_PEM]
Prints one JSON document: {"ok": true, ...} and exits 0, or {"ok": false, "error": ...} and exits 1.
"""

import base64
import hashlib
import json
import struct
import sys

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding


class Bad(Exception):
    """The input does not verify; the message says where."""


def canonical(value):
    """RFC 8785 style canonical JSON: sorted keys (UTF-16 code units), no whitespace, integers only."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        raise Bad("an entry holds a non-integer number")
    if isinstance(value, str):
        out = ['"']
        for ch in value:
            code = ord(ch)
            if ch == '"':
                out.append('\\"')
            elif ch == "\\":
                out.append("\\\\")
            elif ch == "\b":
                out.append("\\b")
            elif ch == "\f":
                out.append("\\f")
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\r":
                out.append("\\r")
            elif ch == "\t":
                out.append("\\t")
            elif code < 0x20:
                out.append("\\u%04x" % code)
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if isinstance(value, list):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(canonical(k) + ":" + canonical(value[k]) for k in keys) + "}"
    raise Bad("an entry holds a value JSON does not have")


def leaf_hash(entry):
    return hashlib.sha256(b"\x00" + canonical(entry).encode("utf-8")).digest()


def tree_hash(leaves):
    """RFC 6962 MTH over leaf hashes."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    split = 1
    while split * 2 < len(leaves):
        split *= 2
    return hashlib.sha256(b"\x01" + tree_hash(leaves[:split]) + tree_hash(leaves[split:])).digest()


def read_export(path):
    entries = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            record = json.loads(line)
            entry = record["entry"]
            if entry.get("seq") != number:
                raise Bad(f"line {number} holds entry {entry.get('seq')}: deleted, duplicated or reordered")
            if leaf_hash(entry).hex() != record["leaf_hash"]:
                raise Bad(f"entry {number}'s leaf hash does not match its content")
            entries.append(entry)
    return entries


def read_key(text):
    # A key name never holds "+" (signed-note); the base64 key may.
    name, key_id, encoded = text.strip().split("+", 2)
    raw = base64.b64decode(encoded, validate=True)
    if len(raw) != 33 or raw[0] != 0x01:
        raise Bad("the public key is not a signed-note Ed25519 key")
    if hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex() != key_id.lower():
        raise Bad("the public key's ID does not match its name and key")
    return name, bytes.fromhex(key_id), Ed25519PublicKey.from_public_bytes(raw[1:])


def read_checkpoint(text, key):
    name, key_id, public = key
    body, sep, signatures = text.partition("\n\n")
    if not sep:
        raise Bad("the checkpoint is not a signed note (no blank line before its signatures)")
    body += "\n"
    verified = False
    for line in signatures.splitlines():
        if not line.startswith("\u2014 "):
            raise Bad("a signature line does not start with an em dash")
        signer, _, encoded = line[2:].rpartition(" ")
        blob = base64.b64decode(encoded, validate=True)
        if signer != name or blob[:4] != key_id:
            continue
        try:
            public.verify(blob[4:], body.encode("utf-8"))
        except InvalidSignature:
            raise Bad("the checkpoint's signature does not verify with the public key")
        verified = True
    if not verified:
        raise Bad("the checkpoint carries no signature by the public key")
    lines = body.split("\n")
    origin, size, root = lines[0], int(lines[1]), base64.b64decode(lines[2], validate=True)
    if origin != name:
        raise Bad(f"the checkpoint's origin {origin!r} is not the key's name {name!r}")
    return size, root


def chunk_digest(run_id, job_id, fencing_token, stream, seq, prev, data):
    def prefixed(raw):
        return struct.pack(">Q", len(raw)) + raw

    return hashlib.sha256(
        b"keyward.log-chunk.v1\x00"
        + prefixed(run_id.encode())
        + prefixed(job_id.encode())
        + struct.pack(">Q", fencing_token)
        + prefixed(stream.encode())
        + struct.pack(">Q", seq)
        + prefixed(prev)
        + prefixed(data)
    ).digest()


def verify_bundle(bundle, ca_pem, entries):
    if bundle.get("format") != "keyward-log-bundle/1":
        raise Bad("not a keyward-log-bundle/1")
    ca = x509.load_pem_x509_certificate(ca_pem)
    signers = {}
    for signer in bundle["signers"]:
        certificate = x509.load_pem_x509_certificate(signer["certificate"].encode())
        der = certificate.public_bytes(Encoding.DER)
        if hashlib.sha256(der).hexdigest() != signer["fingerprint"]:
            raise Bad("a signer certificate does not match its fingerprint")
        try:
            certificate.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise Bad("a signer certificate was not issued by the pinned agent CA")
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
        if len(uris) != 1 or not uris[0].endswith("/agent/" + signer["agent_id"]):
            raise Bad("a signer certificate does not name its agent")
        signers[signer["fingerprint"]] = certificate
    seals = {}
    for entry in entries:
        if entry["kind"] == "job.finished":
            details = entry["details"]
            seals[(details["job_id"], details["fencing_token"])] = (details.get("log_digest"), details.get("log_chunks"))
    run_id, chunks_checked = bundle["run_id"], 0
    for lease in bundle["leases"]:
        prev = bytes(32)
        for position, chunk in enumerate(lease["chunks"]):
            where = f"job {lease['job_id']} chunk {position}"
            if chunk["seq"] != position or bytes.fromhex(chunk["prev_digest"]) != prev:
                raise Bad(f"{where}: the chain is broken (missing, reordered or spliced)")
            data = base64.b64decode(chunk["data"], validate=True)
            digest = chunk_digest(run_id, lease["job_id"], lease["fencing_token"], chunk["stream"], position, prev, data)
            if digest.hex() != chunk["digest"]:
                raise Bad(f"{where}: the digest does not match the chunk (edited)")
            certificate = signers.get(chunk["signer"])
            if certificate is None:
                raise Bad(f"{where}: signed by a certificate the bundle does not hold")
            arrived = chunk["received_at"]
            if not (certificate.not_valid_before_utc.timestamp() <= arrived <= certificate.not_valid_after_utc.timestamp()):
                raise Bad(f"{where}: its certificate was not valid when it arrived")
            try:
                certificate.public_key().verify(base64.b64decode(chunk["signature"]), digest, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                raise Bad(f"{where}: the signature does not verify")
            prev = digest
            chunks_checked += 1
        head = prev.hex() if lease["chunks"] else None
        sealed = lease.get("sealed")
        if sealed is not None and (sealed["digest"], sealed["chunks"]) != (head, len(lease["chunks"])):
            raise Bad(f"job {lease['job_id']}: the chain's head is not the sealed one")
        on_record = seals.get((lease["job_id"], lease["fencing_token"]))
        if on_record is None:
            raise Bad(f"job {lease['job_id']}: no job.finished entry in the verified log seals it")
        if on_record != (head, len(lease["chunks"])):
            raise Bad(f"job {lease['job_id']}: the head is not the one the audit log sealed")
    return len(bundle["leases"]), chunks_checked


def main(argv):
    export, checkpoint, public_key = argv[:3]
    with open(public_key, encoding="utf-8") as f:
        key = read_key(f.read())
    with open(checkpoint, encoding="utf-8") as f:
        size, root = read_checkpoint(f.read(), key)
    entries = read_export(export)
    if size > len(entries):
        raise Bad(f"the checkpoint covers {size} entries; the export has {len(entries)}")
    covered = entries[:size]
    if tree_hash([leaf_hash(e) for e in covered]) != root:
        raise Bad(f"the root of the first {size} entries is not the checkpoint's signed root")
    result = {"ok": True, "entries": len(entries), "checkpoint_size": size}
    if len(argv) == 5:
        with open(argv[3], encoding="utf-8") as f:
            bundle = json.load(f)
        with open(argv[4], "rb") as f:
            ca_pem = f.read()
        result["leases"], result["chunks"] = verify_bundle(bundle, ca_pem, covered)
    return result


if __name__ == "__main__":
    try:
        print(json.dumps(main(sys.argv[1:])))
    except (Bad, ValueError, KeyError, IndexError, TypeError) as error:
        print(json.dumps({"ok": False, "error": f"{type(error).__name__}: {error}"}))
        sys.exit(1)
