// Keyward console: checks the audit page's inclusion proofs in the reader's own browser.
//
// For each entry row (data-entry) it recomputes the leaf hash SHA-256(0x00 || bytes) from the
// entry's canonical JSON exactly as the broker hashed it (data-body, base64), checks that it is
// the tree's leaf (data-leaf-hash), walks the audit path (data-proof) with RFC 9162 §2.1.3.2 and
// compares the result with the root shown for that tree size (a data-anchor element: the signed
// checkpoint, or the log's current head). Results are written with textContent only.
//
// No dependencies; WebCrypto only. The same file is loaded by Node in the tests: it exports
// KeywardVerify on globalThis (and module.exports) and touches the page only when there is one.
(function (root) {
  'use strict';

  function hexToBytes(hex) {
    if (typeof hex !== 'string' || !/^([0-9a-f]{2})*$/.test(hex)) throw new Error('not lowercase hex');
    const out = new Uint8Array(hex.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
    return out;
  }

  function bytesToHex(bytes) {
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  function base64ToBytes(text) {
    const binary = root.atob(text);
    const out = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
    return out;
  }

  // SHA-256(prefix || parts...), prefix 0x00 for a leaf and 0x01 for an interior node (RFC 6962 §2.1).
  async function hashWithPrefix(prefix, parts) {
    const length = parts.reduce((n, p) => n + p.length, 1);
    const data = new Uint8Array(length);
    data[0] = prefix;
    let at = 1;
    for (const part of parts) {
      data.set(part, at);
      at += part.length;
    }
    return new Uint8Array(await root.crypto.subtle.digest('SHA-256', data));
  }

  const leafHash = (bytes) => hashWithPrefix(0, [bytes]);
  const nodeHash = (left, right) => hashWithPrefix(1, [left, right]);

  // RFC 9162 §2.1.3.2: the root that `proof` leads to from `leaf` at `index` in a tree of `size`
  // leaves, or null when the proof has the wrong length for that position. Indexes are Numbers:
  // exact up to 2^53 entries.
  async function rootFromInclusion(leaf, index, size, proof) {
    if (!(Number.isSafeInteger(index) && Number.isSafeInteger(size) && index >= 0 && index < size)) return null;
    let fn = index;
    let sn = size - 1;
    let r = leaf;
    for (const p of proof) {
      if (sn === 0) return null;
      if (fn % 2 === 1 || fn === sn) {
        r = await nodeHash(p, r);
        if (fn % 2 === 0) {
          while (fn % 2 === 0 && fn !== 0) {
            fn = Math.floor(fn / 2);
            sn = Math.floor(sn / 2);
          }
        }
      } else {
        r = await nodeHash(r, p);
      }
      fn = Math.floor(fn / 2);
      sn = Math.floor(sn / 2);
    }
    return sn === 0 ? r : null;
  }

  // Checks one entry: { body (base64), leafHash, index, size, proof: [hex], root (hex) }.
  // Returns { ok: true } or { ok: false, reason }.
  async function verifyEntry(entry) {
    try {
      const leaf = await leafHash(base64ToBytes(entry.body));
      if (bytesToHex(leaf) !== entry.leafHash) return { ok: false, reason: 'the entry does not hash to its leaf' };
      const computed = await rootFromInclusion(leaf, entry.index, entry.size, entry.proof.map(hexToBytes));
      if (computed === null || bytesToHex(computed) !== entry.root) {
        return { ok: false, reason: 'the proof does not lead to the root' };
      }
      return { ok: true };
    } catch (error) {
      return { ok: false, reason: 'malformed proof data' };
    }
  }

  // The page: every data-entry row against the data-anchor of its tree size.
  async function checkPage(document) {
    const summary = document.getElementById('proof-summary');
    const rows = Array.from(document.querySelectorAll('tr[data-entry]'));
    if (rows.length === 0) return;
    if (!(root.crypto && root.crypto.subtle)) {
      // WebCrypto exists only in secure contexts (HTTPS or localhost).
      if (summary) summary.textContent = 'Not checked in this page: this browser offers no WebCrypto here (the page is not served over HTTPS). Check offline as shown below.';
      return;
    }
    const anchors = new Map();
    for (const a of document.querySelectorAll('[data-anchor]')) {
      const known = anchors.get(a.dataset.size);
      if (!known || a.dataset.signed === 'true') anchors.set(a.dataset.size, a.dataset);
    }
    let failed = 0;
    for (const row of rows) {
      const d = row.dataset;
      const anchor = anchors.get(d.size);
      const result = anchor
        ? await verifyEntry({
            body: d.body,
            leafHash: d.leafHash,
            index: Number(d.seq),
            size: Number(d.size),
            proof: d.proof ? d.proof.split(' ') : [],
            root: anchor.root,
          })
        : { ok: false, reason: 'no root for this tree size' };
      const cell = row.querySelector('[data-status]');
      if (!cell) continue;
      if (result.ok) {
        cell.textContent = anchor.signed === 'true'
          ? '\u2713 included in checkpoint ' + d.size + ' (checked in your browser)'
          : '\u2713 included in the log\u2019s head of ' + d.size + ' entries, not yet signed (checked in your browser)';
        cell.className = 'proof-ok';
      } else {
        failed++;
        cell.textContent = '\u2717 proof failed: ' + result.reason;
        cell.className = 'proof-failed';
      }
    }
    if (summary) {
      summary.textContent = failed === 0
        ? 'All ' + rows.length + ' inclusion proofs checked in your browser.'
        : failed + ' of ' + rows.length + ' inclusion proofs FAILED in your browser: do not trust this trail; check it offline.';
    }
  }

  const api = { hexToBytes, bytesToHex, base64ToBytes, leafHash, nodeHash, rootFromInclusion, verifyEntry, checkPage };
  root.KeywardVerify = api;
  if (typeof module === 'object' && module.exports) module.exports = api;
  // `defer`: the document is parsed when this runs.
  if (typeof document === 'object' && document) checkPage(document);
})(globalThis);
