/**
 * The pure parts of fleet mode, without an etcd: the key layout (names cannot reach into
 * another key's range; chunk keys sort in index order), prefix ranges, endpoint checks, the
 * error a failure becomes, which failures are retried, and the first-fit search of free chunk
 * runs against a brute-force model (fast-check).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { GRPCDeadlineExceededError, GRPCInvalidArgumentError, GRPCUnavailableError } from 'etcd3';
import {
  CHUNK_INDEX_DIGITS,
  ETCD_PREFIX,
  EtcdKeys,
  catalogUnavailable,
  checkEndpoints,
  chunkIndexOf,
  isTransient,
  prefixEnd,
} from '../../src/catalog/etcd.js';
import { firstFit } from '../../src/catalog/leased-chunks.js';
import { ErrorCodes } from '../../src/errors.js';

const inRange = (key: string, prefix: string) =>
  Buffer.compare(Buffer.from(key), Buffer.from(prefix)) >= 0 &&
  Buffer.compare(Buffer.from(key), prefixEnd(prefix)) < 0;

test('every key lives under /memfabric/v1/ and a name stays inside its own range', () => {
  fc.assert(
    fc.property(
      fc.string({ minLength: 1 }),
      fc.string({ minLength: 1 }),
      fc.string({ minLength: 1 }),
      (t1, t2, name) => {
        const key = EtcdKeys.region(t1, name);
        assert.ok(key.startsWith(ETCD_PREFIX));
        assert.ok(inRange(key, EtcdKeys.regionsOf(t1)) && inRange(key, EtcdKeys.regions));
        // Another tenant's range never holds it, whatever either name holds ('/' included).
        if (t1 !== t2) assert.ok(!inRange(key, EtcdKeys.regionsOf(t2)), `${t1} ${t2} ${name}`);
        const chunk = EtcdKeys.chunk(t1, name, 7);
        assert.ok(inRange(chunk, EtcdKeys.chunksOf(t1, name)));
        if (t1 !== t2) assert.ok(!inRange(chunk, EtcdKeys.chunksOf(t2, name)));
        assert.ok(!inRange(EtcdKeys.chunkPool(t1, name), EtcdKeys.chunksOf(t1, name)));
      },
    ),
  );
});

test('chunk keys sort in index order and give their index back', () => {
  fc.assert(
    fc.property(fc.nat(10 ** CHUNK_INDEX_DIGITS - 1), fc.nat(10 ** CHUNK_INDEX_DIGITS - 1), (a, b) => {
      const ka = EtcdKeys.chunk('t', 'r', a);
      const kb = EtcdKeys.chunk('t', 'r', b);
      assert.equal(Math.sign(Buffer.compare(Buffer.from(ka), Buffer.from(kb))), Math.sign(a - b));
      assert.equal(chunkIndexOf(ka), a);
    }),
  );
  assert.ok(Number.isNaN(chunkIndexOf(EtcdKeys.chunkPool('t', 'r'))));
});

test('endpoints are checked, and failures become MF_CATALOG_UNAVAILABLE naming them', () => {
  assert.deepEqual(checkEndpoints(['http://10.0.0.1:2379/', 'https://e:2379']), [
    'http://10.0.0.1:2379',
    'https://e:2379',
  ]);
  for (const bad of [[], ['10.0.0.1:2379'], ['http://e'], ['ftp://e:1'], 'http://e:1', [''], [42]]) {
    assert.throws(() => checkEndpoints(bad), { code: ErrorCodes.INVALID_ARGUMENT }, JSON.stringify(bad));
  }
  const error = catalogUnavailable(['http://a:1', 'http://b:2'], 'create region t/x', new Error('boom'));
  assert.equal(error.code, ErrorCodes.CATALOG_UNAVAILABLE);
  assert.match(error.message, /http:\/\/a:1, http:\/\/b:2.*could not create region t\/x: boom/);
  assert.ok(error.cause instanceof Error);
});

test('leader changes, deadlines and unreachable members are retried; the rest is not', () => {
  assert.ok(isTransient(new GRPCUnavailableError('etcdserver: no leader')));
  assert.ok(isTransient(new GRPCDeadlineExceededError('deadline exceeded')));
  assert.ok(isTransient(new Error('etcdserver: leader changed')));
  assert.ok(isTransient(new Error('14 UNAVAILABLE: No connection established')));
  assert.ok(!isTransient(new GRPCInvalidArgumentError('etcdserver: too many operations in txn request')));
  assert.ok(!isTransient(new Error('etcdserver: permission denied')));
  assert.ok(!isTransient('unavailable'));
});

test('firstFit finds the lowest free run, as a brute-force search does', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 40 }),
      fc.integer({ min: 1, max: 10 }),
      fc.uniqueArray(fc.nat(45)),
      (total, count, held) => {
        const kvs = held.map((i) => ({ key: Buffer.from(EtcdKeys.chunk('t', 'r', i)) }));
        let expected: number | undefined;
        for (let s = 0; s + count <= total && expected === undefined; s++) {
          if (!held.some((h) => h >= s && h < s + count)) expected = s;
        }
        assert.equal(firstFit(kvs as never, total, count), expected);
      },
    ),
  );
});
