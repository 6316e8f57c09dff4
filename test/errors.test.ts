/**
 * Docs and code cannot drift: every error code is documented in docs/errors.md, and every
 * code the docs name exists.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { ErrorCodes, MemfabricError } from '../src/index.js';

const docs = readFileSync(new URL('../docs/errors.md', import.meta.url), 'utf8');

test('every error code is documented in docs/errors.md', () => {
  for (const code of Object.values(ErrorCodes)) {
    assert.match(docs, new RegExp(`^\\| \`${code}\` +\\|`, 'm'), `${code} has no row in docs/errors.md`);
  }
});

test('every code docs/errors.md names exists', () => {
  const known = new Set<string>(Object.values(ErrorCodes));
  const documented = [...docs.matchAll(/^\| `(MF_[A-Z_]+)` +\|/gm)].map((match) => match[1]!);
  assert.ok(documented.length > 0);
  for (const code of documented) assert.ok(known.has(code), `docs/errors.md names unknown code ${code}`);
});

test('MemfabricError carries its code and chains its cause', () => {
  const cause = new Error('disk on fire');
  const error = new MemfabricError(ErrorCodes.CORRUPT_FILE, 'bad header', { cause });
  assert.equal(error.code, 'MF_CORRUPT_FILE');
  assert.equal(error.cause, cause);
  assert.ok(error instanceof Error);
});
