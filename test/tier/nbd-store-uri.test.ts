/**
 * NBD URIs as the 'nbd' page store reads them (src/nbd/protocol/uri.ts): the spec's export-name table,
 * TLS schemes and parameters, a round trip for any export name, and every refusal a typed
 * MF_INVALID_ARGUMENT that shows a valid URI.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { ErrorCodes, MemfabricError } from '../../src/index.js';
import { parseNbdUri } from '../../src/nbd/index.js';

function invalid(...fragments: string[]) {
  return (error: unknown): boolean => {
    assert.ok(error instanceof MemfabricError, `expected a MemfabricError, got ${String(error)}`);
    assert.equal(error.code, ErrorCodes.INVALID_ARGUMENT, error.message);
    assert.ok(error.message.includes('nbd://127.0.0.1:10809/'), `an example in: ${error.message}`);
    for (const fragment of fragments) {
      assert.ok(error.message.includes(fragment), `"${fragment}" in: ${error.message}`);
    }
    return true;
  };
}

test("the spec's export-name table, and the default port", () => {
  const table: Array<[string, string]> = [
    ['nbd://example.com/disk', 'disk'],
    ['nbd://example.com/', ''],
    ['nbd://example.com', ''],
    ['nbd://example.com//disk', '/disk'],
    ['nbd://example.com/hello%20world', 'hello world'],
  ];
  for (const [uri, exportName] of table) {
    const parsed = parseNbdUri(uri);
    assert.equal(parsed.exportName, exportName, uri);
    assert.equal(parsed.host, 'example.com', uri);
    assert.equal(parsed.port, 10809, uri);
    assert.equal(parsed.tls, false, uri);
  }
});

test('ports, IPv6 hosts, nbds and its TLS parameters', () => {
  assert.deepEqual(parseNbdUri('nbd://127.0.0.1:5000/heap'), {
    tls: false,
    host: '127.0.0.1',
    port: 5000,
    exportName: 'heap',
    display: 'nbd://127.0.0.1:5000/heap',
  });
  const v6 = parseNbdUri('nbd://[::1]:10900/x');
  assert.equal(v6.host, '::1', 'brackets are URI syntax, not part of the address');
  assert.equal(v6.display, 'nbd://[::1]:10900/x');
  const secure = parseNbdUri(
    'nbds://appliance.example:10809/tenant-a?tls-hostname=fabric.example&tls-type=psk',
  );
  assert.equal(secure.tls, true);
  assert.equal(secure.tlsHostname, 'fabric.example');
  assert.equal(secure.tlsType, 'psk');
  assert.equal(secure.display, 'nbds://appliance.example:10809/tenant-a', 'the query stays out of names');
});

test('exports named "." and ".." keep their names (a URL parser would resolve them away)', () => {
  for (const name of ['.', '..']) {
    const parsed = parseNbdUri(`nbd://127.0.0.1:10809/${name}`);
    assert.equal(parsed.exportName, name);
    assert.equal(parseNbdUri(parsed.display).exportName, name);
  }
});

test('any export name survives a round trip through a URI', () => {
  fc.assert(
    fc.property(
      fc.string({ unit: 'grapheme', maxLength: 40 }).filter((name) => !name.includes('\0')),
      fc.integer({ min: 1, max: 65535 }),
      fc.boolean(),
      (name, port, tls) => {
        const uri = `${tls ? 'nbds' : 'nbd'}://127.0.0.1:${port}/${encodeURIComponent(name)}`;
        const parsed = parseNbdUri(uri);
        assert.equal(parsed.exportName, name);
        assert.equal(parsed.port, port);
        assert.equal(parsed.tls, tls);
        assert.equal(parseNbdUri(parsed.display).exportName, name, 'the display form names the same export');
      },
    ),
  );
});

test('what memfabric cannot use is INVALID_ARGUMENT saying why, with an example', () => {
  const bad: Array<[unknown, string]> = [
    ['', 'non-empty string'],
    [42, 'non-empty string'],
    ['127.0.0.1:10809', 'scheme'],
    ['http://127.0.0.1:10809/x', 'the scheme is http://'],
    ['nbd+unix:///disk?socket=/tmp/sock', 'nbd+unix:// scheme is not supported'],
    ['nbds+unix:///disk?socket=/tmp/sock', 'TCP only'],
    ['nbd:///disk', 'names no host'],
    ['nbd:127.0.0.1/disk', 'names no host'],
    ['nbd://127.0.0.1:0/disk', 'port 0'],
    ['nbd://127.0.0.1:99999/disk', 'does not parse'],
    ['nbd://alice@127.0.0.1/disk', 'user name'],
    ['nbd://127.0.0.1/disk#part', 'fragment'],
    ['nbd://127.0.0.1/%E0%A4%A', 'malformed %-escape'],
    ['nbd://127.0.0.1/a%00b', 'NUL'],
    ['nbd://127.0.0.1/disk?socket=/tmp/x', '"socket" is not understood'],
    ['nbds://127.0.0.1/disk?tls-type=anon', 'tls-type=anon'],
    ['nbd://127.0.0.1/disk?tls-hostname=h', 'need the nbds:// scheme'],
  ];
  for (const [uri, fragment] of bad) {
    assert.throws(() => parseNbdUri(uri), invalid(fragment), String(uri));
  }
});
