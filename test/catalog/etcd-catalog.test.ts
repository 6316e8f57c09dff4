/**
 * EtcdCatalog against a real 3-member etcd cluster on loopback:
 *   - create/get/list/update/remove and their typed errors; names with '/', '%' and other
 *     characters stay in their own key (fast-check); a damaged entry is skipped and logged;
 *   - two clients racing to create one name: exactly one wins each round, the other gets
 *     MF_ALREADY_EXISTS and the stored descriptor is the winner's;
 *   - two clients racing to update one generation: exactly one wins, the other gets
 *     MF_STALE_GENERATION;
 *   - the etcd leader is SIGKILLed during a loop of creates and updates: every acknowledged
 *     create and update is there afterwards and operations go on after the failover;
 *   - no etcd reachable: MF_CATALOG_UNAVAILABLE naming the endpoints, within the retry bound.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import fc from 'fast-check';
import { EtcdCatalog } from '../../src/catalog/etcd-catalog.js';
import { EtcdKeys } from '../../src/catalog/etcd.js';
import {
  nextGeneration,
  sealDescriptor,
  DESCRIPTOR_FORMAT,
  type RegionDescriptor,
} from '../../src/catalog/descriptor.js';
import type { MemfabricError } from '../../src/errors.js';
import { ErrorCodes } from '../../src/errors.js';
import { EtcdCluster } from '../support/etcd-cluster.js';
import { outcome } from '../typed-error.js';

/** Operations the failover loop must have acknowledged after the leader's death. */
const OPS_AFTER_KILL = 20;
/** Bound of the failover loop (it ends far sooner when etcd fails over). */
const LOOP_MS_MAX = 40_000;

function descriptor(tenant: string, name: string, appliance = 'http://127.0.0.1:1'): RegionDescriptor {
  return sealDescriptor({
    format: DESCRIPTOR_FORMAT,
    id: randomBytes(8).toString('hex'),
    name,
    tenant,
    size: 1 << 20,
    pageSize: 4096,
    redundancy: 'none',
    generation: 1,
    state: 'creating',
    shards: [
      { index: 0, appliance, region: `${name}-0`, nbd: { host: '127.0.0.1', port: 1 }, state: 'live' },
    ],
    createdAt: Date.now(),
  });
}

test('EtcdCatalog on a real 3-member etcd cluster', async (t) => {
  const cluster = await EtcdCluster.start(t, { members: 3 });
  if (!cluster) return;
  const warnings: string[] = [];
  const open = () =>
    new EtcdCatalog({
      endpoints: cluster.endpoints,
      retryMs: 30_000,
      logger: { warn: (obj: unknown) => warnings.push(JSON.stringify(obj)) } as never,
    });
  const a = open();
  const b = open();
  t.after(() => Promise.all([a.close(), b.close()]));

  await t.test('create, get, list, update, remove and their errors', async () => {
    const d1 = descriptor('t1', 'alpha');
    await a.create(d1);
    assert.deepEqual((await b.get('t1', 'alpha'))?.descriptor, d1);
    assert.deepEqual((await b.get('t1', 'alpha'))?.shardsFound, [0]);
    assert.equal(await outcome(b.create(descriptor('t1', 'alpha'))), ErrorCodes.ALREADY_EXISTS);
    // A descriptor edited after sealing is the caller's mistake, not a conflict.
    assert.equal(
      await outcome(b.create({ ...descriptor('t1', 'edited'), size: 5 })),
      ErrorCodes.INVALID_ARGUMENT,
    );
    assert.equal(await b.get('t1', 'edited'), undefined);
    // The same name in another tenant is another region.
    await b.create(descriptor('t2', 'alpha'));

    const d2 = nextGeneration(d1, { state: 'ready' });
    await b.update(d2);
    assert.equal((await a.get('t1', 'alpha'))?.descriptor.generation, 2);
    // An update built on generation 1 again is stale, and so is one that skips a generation.
    assert.equal(
      await outcome(a.update(nextGeneration(d1, { state: 'deleting' }))),
      ErrorCodes.STALE_GENERATION,
    );
    assert.equal(
      await outcome(a.update(nextGeneration(nextGeneration(d2, {}), {}))),
      ErrorCodes.STALE_GENERATION,
    );
    // Applying the very same update twice is a no-op, not a conflict (a retried write).
    await b.update(d2);

    assert.deepEqual(
      (await a.list('t1')).map((e) => e.descriptor.name),
      ['alpha'],
    );
    const everyTenant = (await a.list()).map((e) => `${e.descriptor.tenant}/${e.descriptor.name}`);
    assert.ok(everyTenant.includes('t1/alpha') && everyTenant.includes('t2/alpha'), everyTenant.join());

    // A stale caller's remove (another region under the name by now) leaves the new region.
    await a.remove(d2);
    assert.equal(await a.get('t1', 'alpha'), undefined);
    await a.remove(d2); // absent: no error
    const reborn = descriptor('t1', 'alpha');
    await a.create(reborn);
    await b.remove(d1);
    assert.equal((await a.get('t1', 'alpha'))?.descriptor.id, reborn.id);
    assert.equal(await outcome(b.update(nextGeneration(d2, {}))), ErrorCodes.NOT_FOUND);
    await a.remove(reborn);
    assert.equal(await outcome(a.update(nextGeneration(reborn, {}))), ErrorCodes.NOT_FOUND);
  });

  await t.test('a damaged entry is skipped and logged; its name stays taken', async () => {
    const client = cluster.client();
    try {
      await client.put(EtcdKeys.region('t3', 'broken')).value('{"format":1,"name":"broken"');
      const good = descriptor('t3', 'fine');
      await a.create(good);
      const tampered = { ...descriptor('t3', 'edited'), size: 1 };
      await client.put(EtcdKeys.region('t3', 'edited')).value(JSON.stringify(tampered));
      warnings.length = 0;
      assert.deepEqual(
        (await b.list('t3')).map((e) => e.descriptor.name),
        ['fine'],
      );
      assert.equal(warnings.length, 2, warnings.join('\n'));
      assert.match(warnings.join('\n'), /checksum mismatch/);
      assert.equal(await b.get('t3', 'broken'), undefined);
      assert.equal(await outcome(b.create(descriptor('t3', 'broken'))), ErrorCodes.ALREADY_EXISTS);
    } finally {
      client.close();
    }
  });

  await t.test('names keep to their own keys whatever characters they hold', async () => {
    const name = fc.stringMatching(/^[a-z/%. \u00e9-]{1,12}$/);
    await fc.assert(
      fc.asyncProperty(
        fc.uniqueArray(fc.tuple(name, name), { minLength: 1, maxLength: 4 }),
        async (pairs) => {
          const tenant = `p-${randomBytes(4).toString('hex')}`;
          const made = pairs.map(([x, y]) => descriptor(tenant, `${x}/${y}`));
          const unique = new Map(made.map((d) => [d.name, d]));
          for (const d of unique.values()) await a.create(d);
          const listed = (await b.list(tenant)).map((e) => e.descriptor.name).sort();
          assert.deepEqual(listed, [...unique.keys()].sort());
          for (const d of unique.values()) assert.equal((await b.get(tenant, d.name))?.descriptor.id, d.id);
          // A prefix of a tenant's name is another tenant.
          assert.deepEqual(await b.list(tenant.slice(0, -1)), []);
        },
      ),
      { numRuns: 15 },
    );
  });

  await t.test('two clients racing to create one name: one wins, the other MF_ALREADY_EXISTS', async () => {
    for (let round = 0; round < 20; round++) {
      const name = `race-${round}`;
      const mine = descriptor('race', name, 'http://a');
      const theirs = descriptor('race', name, 'http://b');
      const outcomes = await Promise.all([outcome(a.create(mine)), outcome(b.create(theirs))]);
      assert.deepEqual(
        [...outcomes].sort(),
        ['MF_ALREADY_EXISTS', 'ok'],
        `round ${round}: ${outcomes.join(', ')}`,
      );
      const winner = outcomes[0] === 'ok' ? mine : theirs;
      assert.deepEqual((await a.get('race', name))?.descriptor, winner);
    }
  });

  await t.test('two clients racing to update one generation: exactly one succeeds', async () => {
    let current = descriptor('race', 'updated');
    await a.create(current);
    for (let round = 0; round < 20; round++) {
      const shardA = { ...current.shards[0]!, appliance: `http://a/${round}` };
      const shardB = { ...current.shards[0]!, appliance: `http://b/${round}` };
      const nextA = nextGeneration(current, { shards: [shardA] });
      const nextB = nextGeneration(current, { shards: [shardB] });
      const outcomes = await Promise.all([outcome(a.update(nextA)), outcome(b.update(nextB))]);
      assert.deepEqual([...outcomes].sort(), ['MF_STALE_GENERATION', 'ok'], `round ${round}`);
      current = outcomes[0] === 'ok' ? nextA : nextB;
      assert.deepEqual((await b.get('race', 'updated'))?.descriptor, current);
    }
  });

  await t.test(
    'the etcd leader is killed during creates and updates: nothing acknowledged is lost',
    async () => {
      const created = new Map<string, RegionDescriptor>();
      let acknowledgedAfterKill = 0;
      let killed: Promise<void> | undefined;
      let leaderGone = false;
      const deadline = Date.now() + LOOP_MS_MAX;
      for (let i = 0; acknowledgedAfterKill < OPS_AFTER_KILL; i++) {
        assert.ok(Date.now() < deadline, `only ${acknowledgedAfterKill} operations after the kill`);
        const client = i % 2 === 0 ? a : b;
        const d = descriptor('failover', `r-${i}`);
        await client.create(d); // a failure here fails the test: failover must be invisible
        created.set(d.name, d);
        const next = nextGeneration(d, { state: 'ready' });
        await client.update(next);
        created.set(d.name, next);
        if (leaderGone) acknowledgedAfterKill++;
        if (i === 5) {
          const leader = await cluster.leader();
          killed = cluster.kill(leader).then(() => {
            leaderGone = true;
          });
        }
      }
      await killed;
      const listed = new Map((await a.list('failover')).map((e) => [e.descriptor.name, e.descriptor]));
      assert.equal(listed.size, created.size);
      for (const [name, d] of created) assert.deepEqual(listed.get(name), d, name);
    },
  );

  await t.test('without a quorum, changes wait for it (or fail past retryMs)', async () => {
    const running = cluster.memberNames.filter((m) => cluster.pid(m) !== undefined);
    const down = cluster.memberNames.filter((m) => cluster.pid(m) === undefined);
    // Leave one member of three: no majority, so no leader and no writes.
    for (const member of running.slice(1)) await cluster.kill(member);
    const impatient = new EtcdCatalog({ endpoints: cluster.endpoints, retryMs: 1000, callTimeoutMs: 500 });
    const late = descriptor('quorum', 'late');
    try {
      await assert.rejects(impatient.create(late), (error: MemfabricError) => {
        assert.equal(error.code, ErrorCodes.CATALOG_UNAVAILABLE);
        assert.match(error.message, /could not create region quorum\/late/);
        assert.match(error.message, /may still be applied/);
        return true;
      });
    } finally {
      await impatient.close();
    }
    // The patient client's create, begun without a quorum, waits until a member is back.
    const waiting = a.create(descriptor('quorum', 'waited'));
    await cluster.restart([...down, ...running.slice(1)][0]!);
    await waiting;
    assert.equal((await b.get('quorum', 'waited'))?.descriptor.name, 'waited');
    // The failed create may have landed after all (the lone member had it in its log, and etcd
    // commits it once a majority is back) or not: repeating the same create settles it.
    await a.create(late);
    assert.deepEqual((await b.get('quorum', 'late'))?.descriptor, late);
  });

  await t.test('no etcd answering: MF_CATALOG_UNAVAILABLE naming the endpoints', async () => {
    const port = await closedPort();
    const lonely = new EtcdCatalog({
      endpoints: [`http://127.0.0.1:${port}`],
      retryMs: 300,
      callTimeoutMs: 500,
    });
    try {
      await assert.rejects(lonely.get('t1', 'x'), (error: MemfabricError) => {
        assert.equal(error.code, ErrorCodes.CATALOG_UNAVAILABLE);
        assert.match(error.message, new RegExp(`127\\.0\\.0\\.1:${port}`));
        assert.match(error.message, /majority of the etcd members/);
        return true;
      });
      await assert.rejects(lonely.create(descriptor('t1', 'x')), { code: ErrorCodes.CATALOG_UNAVAILABLE });
    } finally {
      await lonely.close();
    }
  });
});

/** A loopback port with nothing listening (bound, then closed). */
function closedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}
