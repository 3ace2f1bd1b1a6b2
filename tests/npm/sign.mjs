// Prints GitHub's X-Hub-Signature-256 value (`sha256=<hex>`) for a body file and a secret,
// computed by @octokit/webhooks-methods: an implementation independent of the broker's.
// Usage: node sign.mjs BODY_FILE SECRET
import { readFileSync } from "node:fs";
import { sign } from "@octokit/webhooks-methods";

const [bodyFile, secret] = process.argv.slice(2);
if (!bodyFile || !secret) {
  console.error("usage: node sign.mjs BODY_FILE SECRET");
  process.exit(2);
}
process.stdout.write(await sign(secret, readFileSync(bodyFile, "utf8")));
