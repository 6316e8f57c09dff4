/**
 * The controller's pure parts, as properties (fast-check): which shards of a descriptor need a
 * rebuild, how many losses a redundancy covers, and what a rebuild request must hold to be
 * acted on (an owner must never rebuild on a malformed or foreign request).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { lostAppliances, tolerance } from '../../src/catalog/controller.js';
import { DESCRIPTOR_FORMAT, sealDescriptor, type ShardPlacement } from '../../src/catalog/descriptor.js';
import {
  REBUILD_REQUESTS_PREFIX,
  parseRebuildRequest,
  rebuildRequestKey,
  type RebuildRequest,
} from '../../src/catalog/rebuild-requests.js';

const urls = Array.from({ length: 8 }, (_, i) => `http://127.0.0.1:${10880 + i}`);
const shardArb = fc.record({
  appliance: fc.constantFrom(...urls),
  state: fc.constantFrom<ShardPlacement['state']>('live', 'rebuilding', 'lost'),
});

test('lostAppliances lists, in shard order, exactly the shards not live or on an appliance etcd does not list', () => {
  fc.assert(
    fc.property(
      fc.array(shardArb, { minLength: 1, maxLength: 12 }),
      fc.subarray(urls),
      (shards, liveList) => {
        const descriptor = sealDescriptor({
          format: DESCRIPTOR_FORMAT,
          id: 'abc',
          name: 'r',
          tenant: 'default',
          size: 4096,
          pageSize: 4096,
          redundancy: 'none',
          generation: 1,
          state: 'ready',
          createdAt: 0,
          shards: shards.map((s, index) => ({
            index,
            appliance: s.appliance,
            region: `r-${index}`,
            nbd: { host: '127.0.0.1', port: 10809 },
            state: s.state,
          })),
        });
        const live = new Set(liveList);
        const expected: string[] = [];
        for (const s of shards) if (s.state !== 'live' || !live.has(s.appliance)) expected.push(s.appliance);
        assert.deepEqual(lostAppliances(descriptor, live), expected);
      },
    ),
  );
});

test('tolerance: parity shards, copies less one, none for a plain region', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 16 }), fc.integer({ min: 1, max: 14 }), (copies, parity) => {
      assert.equal(tolerance({ copies }), copies - 1);
      assert.equal(tolerance({ data: 4, parity }), parity);
    }),
  );
  assert.equal(tolerance('none'), 0);
});

test('a rebuild request parses only when whole; request keys stay under the prefix whatever the name', () => {
  const whole: RebuildRequest = {
    tenant: 'default',
    name: 'vectors',
    regionId: 'f00d',
    generation: 3,
    lostAppliances: [urls[0]!],
    requestedAt: 1,
    by: 'ctl',
  };
  assert.deepEqual(parseRebuildRequest(JSON.stringify(whole)), whole);
  for (const field of ['tenant', 'name', 'regionId', 'generation', 'lostAppliances'] as const) {
    const { [field]: _dropped, ...rest } = whole;
    assert.equal(parseRebuildRequest(JSON.stringify(rest)), undefined, `without ${field}`);
  }
  assert.equal(parseRebuildRequest('{not json'), undefined);
  assert.equal(parseRebuildRequest(JSON.stringify({ ...whole, lostAppliances: [1] })), undefined);
  fc.assert(
    fc.property(fc.string(), fc.string(), (tenant, name) => {
      const key = rebuildRequestKey(tenant, name);
      assert.ok(key.startsWith(REBUILD_REQUESTS_PREFIX));
      assert.equal(
        key.slice(REBUILD_REQUESTS_PREFIX.length).split('/').length,
        2,
        'one tenant and one name segment',
      );
    }),
  );
});
