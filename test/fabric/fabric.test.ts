/**
 * The fabric against real appliances (in-process, real sockets, real NBD): every redundancy
 * checked against a model under random I/O, degraded operation, rebuild while in use, scrub,
 * placement and the memory-type fallback. Appliance processes killed with signals are in
 * test/fault/.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { Appliance, ErrorCodes, NbdClient } from '../../src/index.js';
import {
  Fabric,
  place,
  type ApplianceState,
  type ExternalRegion,
  type Redundancy,
} from '../../src/fabric/index.js';
import { ReedSolomonCodec } from '../../src/fabric/codec.js';
import { TEST_TOKEN, bearer, testAuth } from '../appliance/harness.js';
import { seededBytes } from './seeded-bytes.js';

const MiB = 1024 * 1024;

async function appliances(count: number, memory = '128MiB'): Promise<{ list: Appliance[]; urls: string[] }> {
  const list = await Promise.all(
    Array.from({ length: count }, () =>
      Appliance.start({
        memory,
        nbd: { port: 0 },
        http: { port: 0 },
        defaultRegion: false,
        merge: false,
        auth: testAuth,
      }),
    ),
  );
  return { list, urls: list.map((a) => `http://127.0.0.1:${a.httpAddress.port}`) };
}

function applianceOf(list: Appliance[], url: string): Appliance {
  return list.find((a) => `http://127.0.0.1:${a.httpAddress.port}` === url)!;
}

const redundancies: Array<[string, Redundancy, number]> = [
  ['plain', 'none', 1],
  ['mirrored x3', { copies: 3 }, 3],
  ['coded 4+2', { data: 4, parity: 2 }, 6],
  ['coded 3+1', { data: 3, parity: 1 }, 4],
];

/**
 * Reads every shard's bytes straight from its appliance's memory and checks them against the
 * model: each copy holds the model; each coded data shard holds its pages (column s of shard i
 * is page s*k + i) and each parity shard what the codec makes of the stripe.
 */
async function checkShards(
  list: Appliance[],
  region: ExternalRegion,
  redundancy: Redundancy,
  model: Buffer,
  pageSize: number,
): Promise<void> {
  const shardBytes = region.health().shards.map((shard) => {
    const held = applianceOf(list, shard.appliance).registry.require(shard.region);
    const bytes = Buffer.alloc(held.size);
    held.read(0, bytes);
    return bytes;
  });
  if (redundancy === 'none' || 'copies' in redundancy) {
    for (const [i, bytes] of shardBytes.entries()) {
      assert.ok(bytes.subarray(0, model.length).equals(model), `copy ${i} holds the model`);
    }
    return;
  }
  const { data: k, parity: m } = redundancy;
  const stripes = Math.ceil(Math.ceil(model.length / pageSize) / k);
  const padded = Buffer.alloc(stripes * k * pageSize);
  model.copy(padded);
  const codec = new ReedSolomonCodec(k, m);
  const stripe = Buffer.alloc(k * pageSize);
  const parity = Buffer.alloc(m * pageSize);
  for (let s = 0; s < stripes; s++) {
    padded.copy(stripe, 0, s * k * pageSize, (s + 1) * k * pageSize);
    for (let i = 0; i < k; i++) {
      const page = shardBytes[i]!.subarray(s * pageSize, (s + 1) * pageSize);
      assert.ok(
        page.equals(stripe.subarray(i * pageSize, (i + 1) * pageSize)),
        `stripe ${s}, data shard ${i}`,
      );
    }
    await codec.encode(stripe, parity, pageSize);
    for (let j = 0; j < m; j++) {
      const page = shardBytes[k + j]!.subarray(s * pageSize, (s + 1) * pageSize);
      assert.ok(
        page.equals(parity.subarray(j * pageSize, (j + 1) * pageSize)),
        `stripe ${s}, parity shard ${j}`,
      );
    }
  }
}

for (const [label, redundancy, shards] of redundancies) {
  test(`${label}: random reads, writes and trims agree with a model, in every shard and degraded`, async (t) => {
    const { list, urls } = await appliances(shards);
    t.after(() => Promise.all(list.map((a) => a.stop())));
    const fabric = new Fabric({ token: TEST_TOKEN, appliances: urls, requestTimeoutMs: 5000 });
    t.after(() => fabric.close());
    const size = 3 * MiB + 1234;
    const op = fc.record({
      op: fc.constantFrom('write', 'read', 'trim'),
      at: fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
      length: fc.integer({ min: 1, max: 300_000 }),
      seed: fc.integer(),
    });
    // Each run gets its own region and model, and its bytes from the generated seeds: a shrunk
    // counterexample replays on its own. The last run's region stays open for a degraded read.
    let last: { region: ExternalRegion; model: Buffer } | undefined;
    await fc.assert(
      fc.asyncProperty(fc.array(op, { maxLength: 12 }), async (ops) => {
        await last?.region.close();
        const region = (await fabric.allocate({ size, redundancy })) as ExternalRegion;
        const model = Buffer.alloc(size);
        last = { region, model };
        assert.equal(
          new Set(region.health().shards.map((s) => s.appliance)).size,
          shards,
          'one appliance per shard',
        );
        for (const { op, at, length, seed } of ops) {
          const offset = Math.floor(at * (size - length));
          if (op === 'write') {
            const data = seededBytes(seed, length);
            const coded = region.stats().codedBytes;
            await region.write(offset, data);
            data.copy(model, offset);
            if (typeof redundancy === 'object' && 'data' in redundancy) {
              // Every stripe the write touches is coded once, whole.
              const stripeBytes = redundancy.data * fabric.pageSize;
              const stripes =
                Math.floor((offset + length - 1) / stripeBytes) - Math.floor(offset / stripeBytes) + 1;
              assert.equal(region.stats().codedBytes - coded, stripes * stripeBytes, 'coded bytes');
            }
          } else if (op === 'trim') {
            await region.trim(offset, length);
            model.fill(0, offset, offset + length);
          } else {
            const back = await region.read(offset, length);
            assert.ok(back.equals(model.subarray(offset, offset + length)), `read at ${offset}+${length}`);
          }
        }
        assert.ok((await region.read(0, size)).equals(model));
        assert.equal(region.health().degraded, false);
        await checkShards(list, region, redundancy, model, fabric.pageSize);
      }),
      {
        numRuns: 15,
        // Always one write that ends inside a stripe and one that covers many whole stripes.
        examples: [
          [
            [
              { op: 'write', at: 0.3, length: 300_000, seed: 1 },
              { op: 'write', at: 0.01, length: 5_000, seed: 2 },
            ],
          ],
        ],
      },
    );
    if (shards > 1) {
      // Lose the appliance of data shard 0: reads of the last run's region rebuild it.
      const { region, model } = last!;
      await applianceOf(list, region.health().shards[0]!.appliance).stop();
      assert.ok((await region.read(0, size)).equals(model), 'a degraded read returns the model');
      assert.equal(region.health().degraded, true);
      if (typeof redundancy === 'object' && 'data' in redundancy)
        assert.ok(region.stats().degradedReads > 0, 'reads were rebuilt from parity');
    }
  });
}

test('coded 4+2: losing two appliances loses nothing; writes go on; a third loss is DATA_LOST', async (t) => {
  const { list, urls } = await appliances(6);
  t.after(() => Promise.all(list.map((a) => a.stop())));
  const fabric = new Fabric({ token: TEST_TOKEN, appliances: urls, requestTimeoutMs: 3000 });
  const region = (await fabric.allocate({
    size: 8 * MiB,
    redundancy: { data: 4, parity: 2 },
  })) as ExternalRegion;
  t.after(() => fabric.close());
  const model = randomBytes(8 * MiB);
  await region.write(0, model);
  const [first, second, third] = region.health().shards.map((s) => applianceOf(list, s.appliance));
  await first!.stop();
  await second!.stop();
  assert.ok((await region.read(0, model.length)).equals(model), 'degraded reads rebuild from parity');
  const health = region.health();
  assert.equal(health.degraded, true);
  assert.equal(health.lost, 2);
  assert.equal(health.tolerance, 0);
  const patch = randomBytes(200_000);
  await region.write(MiB - 100, patch);
  patch.copy(model, MiB - 100);
  assert.ok((await region.read(0, model.length)).equals(model), 'writes while degraded read back');
  await third!.stop();
  await assert.rejects(region.read(0, model.length), { code: ErrorCodes.DATA_LOST });
});

test('rebuild onto fresh appliances while writes go on, then lose two others', async (t) => {
  const { list, urls } = await appliances(8);
  t.after(() => Promise.all(list.map((a) => a.stop())));
  const fabric = new Fabric({ token: TEST_TOKEN, appliances: urls.slice(0, 6), requestTimeoutMs: 3000 });
  const region = (await fabric.allocate({
    size: 6 * MiB,
    redundancy: { data: 4, parity: 2 },
  })) as ExternalRegion;
  t.after(() => fabric.close());
  const model = randomBytes(6 * MiB);
  await region.write(0, model);
  const victims = region
    .health()
    .shards.slice(1, 3)
    .map((s) => applianceOf(list, s.appliance));
  await Promise.all(victims.map((v) => v.stop()));
  // Writes keep coming while the rebuild runs.
  let writing = true;
  const writer = (async () => {
    for (let i = 0; writing && i < 200; i++) {
      const offset = Math.floor(Math.random() * (model.length - 10_000));
      const data = randomBytes(1 + Math.floor(Math.random() * 9_999));
      await region.write(offset, data);
      data.copy(model, offset);
    }
  })();
  const result = await region.rebuild({ appliances: urls.slice(6, 8) });
  writing = false;
  await writer;
  assert.equal(result.rebuilt, 2);
  assert.equal(region.health().degraded, false);
  assert.ok((await region.read(0, model.length)).equals(model));
  // The rebuilt shards carry their weight: lose two of the original ones.
  const others = region
    .health()
    .shards.filter((s) => !urls.slice(6).includes(s.appliance))
    .slice(0, 2);
  await Promise.all(others.map((s) => applianceOf(list, s.appliance).stop()));
  assert.ok((await region.read(0, model.length)).equals(model));
  assert.deepEqual(await region.scrub().catch((error: { code: string }) => error.code), ErrorCodes.BUSY);
});

test('scrub finds corrupted parity and copies, and repairs them', async (t) => {
  const { list, urls } = await appliances(6);
  t.after(() => Promise.all(list.map((a) => a.stop())));
  const fabric = new Fabric({ token: TEST_TOKEN, appliances: urls, requestTimeoutMs: 3000 });
  t.after(() => fabric.close());
  for (const redundancy of [{ data: 4, parity: 2 }, { copies: 3 }] as const) {
    const region = (await fabric.allocate({ size: 2 * MiB, redundancy })) as ExternalRegion;
    const model = randomBytes(2 * MiB);
    await region.write(0, model);
    assert.deepEqual(await region.scrub(), {
      stripesChecked: 'data' in redundancy ? (2 * MiB) / 4096 / 4 : (2 * MiB) / 4096,
      mismatches: 0,
      repaired: 0,
    });
    // Corrupt one page of the last shard behind the fabric's back.
    const victim = region.health().shards.at(-1)!;
    const appliance = applianceOf(list, victim.appliance);
    const client = await NbdClient.connect({ ...appliance.nbdAddress, exportName: victim.region });
    await client.write(5 * 4096, Buffer.alloc(4096, 0xee));
    await client.disconnect();
    const found = await region.scrub();
    assert.equal(found.mismatches, 1);
    assert.equal(found.repaired, 1);
    assert.equal((await region.scrub()).mismatches, 0, 'repaired for good');
    assert.ok((await region.read(0, model.length)).equals(model));
  }
});

test('placement: one shard per appliance, by free memory, and a typed refusal when short', () => {
  const states: ApplianceState[] = Array.from({ length: 8 }, (_, i) => ({
    url: `http://a${i}`,
    reachable: i !== 7,
    nbd: { host: '127.0.0.1', port: 1 },
    capacityBytes: 100,
    freeBytes: i * 10,
  }));
  const counts = new Map<string, number>();
  for (let run = 0; run < 500; run++) {
    const chosen = place(states, { shards: 4, shardBytes: 5 });
    assert.equal(new Set(chosen.map((a) => a.url)).size, 4, 'never two shards of a region on one appliance');
    assert.ok(
      !chosen.some((a) => a.url === 'http://a7' || a.url === 'http://a0'),
      'not unreachable, not full',
    );
    for (const a of chosen) counts.set(a.url, (counts.get(a.url) ?? 0) + 1);
  }
  assert.ok(
    counts.get('http://a6')! > (counts.get('http://a2') ?? 0),
    'emptier appliances are chosen more often',
  );
  assert.ok(counts.get('http://a6')! > 400, 'the emptiest is nearly always among four of six');
  assert.throws(() => place(states, { shards: 7, shardBytes: 5 }), { code: ErrorCodes.PLACEMENT_FAILED });
  assert.equal(place(states, { shards: 7, shardBytes: 5, overcommit: true }).length, 7);
});

test('allocate prefers the asked memory type and falls back local → external → file', async (t) => {
  const { list, urls } = await appliances(2, '16MiB');
  t.after(() => Promise.all(list.map((a) => a.stop())));
  const dir = await mkdtemp(join(tmpdir(), 'memfabric-fabric-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const fabric = new Fabric({ token: TEST_TOKEN, appliances: urls, localMemory: '4MiB', fileDirectory: dir });
  t.after(() => fabric.close());
  const local = await fabric.allocate({ size: 3 * MiB, prefer: 'local' });
  assert.equal(local.kind, 'local');
  const spill = await fabric.allocate({ size: 3 * MiB, prefer: 'local' });
  assert.equal(spill.kind, 'external', 'local memory is short: external next');
  const big = await fabric.allocate({ size: 64 * MiB, prefer: 'local' });
  assert.equal(big.kind, 'file', 'appliances are short too: a file');
  const mirrored = await fabric.allocate({ size: MiB, prefer: 'local', redundancy: { copies: 2 } });
  assert.equal(mirrored.kind, 'external', 'only appliances give redundancy');
  await assert.rejects(fabric.allocate({ size: MiB, redundancy: { copies: 3 } }), {
    code: ErrorCodes.PLACEMENT_FAILED,
  });
  for (const region of [local, spill, big]) {
    await region.write(region.size - 10, Buffer.from('0123456789'));
    assert.equal((await region.read(region.size - 10, 10)).toString(), '0123456789');
  }
  await local.close();
  assert.equal(
    (await fabric.allocate({ size: 3 * MiB, prefer: 'local' })).kind,
    'local',
    'closing gives local memory back',
  );
  await assert.rejects(local.read(0, 1), { code: ErrorCodes.DESTROYED });
  await assert.rejects(spill.read(3 * MiB, 1), { code: ErrorCodes.OUT_OF_RANGE });
});

test('closing a region deletes its shards on the appliances', async (t) => {
  const { list, urls } = await appliances(3);
  t.after(() => Promise.all(list.map((a) => a.stop())));
  const fabric = new Fabric({ token: TEST_TOKEN, appliances: urls });
  const region = await fabric.allocate({ size: 4 * MiB, redundancy: { copies: 3 } });
  await region.write(0, randomBytes(MiB));
  assert.deepEqual(
    list.map((a) => a.registry.size),
    [1, 1, 1],
  );
  await region.close();
  assert.deepEqual(
    list.map((a) => a.registry.size),
    [0, 0, 0],
  );
  assert.deepEqual(
    list.map((a) => a.stats().memory.usedBytes),
    [0, 0, 0],
  );
});

test('a shard migrated to another appliance is followed: no degradation, nothing lost', async (t) => {
  const { list, urls } = await appliances(4);
  t.after(() => Promise.all(list.map((a) => a.stop())));
  const fabric = new Fabric({ token: TEST_TOKEN, appliances: urls.slice(0, 3), requestTimeoutMs: 5000 });
  t.after(() => fabric.close());
  // No redundancy to hide behind: without following, the region would be lost.
  for (const redundancy of ['none', { data: 2, parity: 1 }] as const) {
    const region = (await fabric.allocate({ size: 4 * MiB, redundancy })) as ExternalRegion;
    const model = randomBytes(4 * MiB);
    await region.write(0, model);
    const shard = region.health().shards[0]!;
    // A target holding no shard of this region (the fabric learns appliances it followed shards to).
    const target = urls.find((url) => !region.health().shards.some((s) => s.appliance === url))!;
    let writing = true;
    let acknowledged = 0;
    const writer = (async () => {
      for (let i = 0; writing && i < 2000; i++) {
        const offset = Math.floor(Math.random() * (model.length - 20_000));
        const data = randomBytes(1 + Math.floor(Math.random() * 19_999));
        await region.write(offset, data);
        data.copy(model, offset);
        acknowledged++;
      }
    })();
    const started = await fetch(`${shard.appliance}/v1/regions/${shard.region}/migrate`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...bearer(TEST_TOKEN) },
      body: JSON.stringify({ target, targetToken: TEST_TOKEN }),
    });
    assert.equal(started.status, 202, await started.text());
    const deadline = Date.now() + 30_000;
    let status: { state: string; error?: unknown } = { state: '' };
    while (status.state !== 'done' && status.state !== 'failed' && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 10));
      status = (await (
        await fetch(`${shard.appliance}/v1/regions/${shard.region}/migration`)
      ).json()) as typeof status;
    }
    assert.equal(status.state, 'done', JSON.stringify(status));
    // Keep writing after the move until the region has used its new home.
    const after = acknowledged;
    while (acknowledged < after + 20 && Date.now() < deadline)
      await new Promise((resolve) => setTimeout(resolve, 5));
    writing = false;
    await writer;
    const health = region.health();
    assert.equal(health.degraded, false, JSON.stringify(health));
    assert.equal(health.shards[0]!.appliance, target, 'the shard now lives on the target');
    assert.ok((await region.read(0, model.length)).equals(model), 'every acknowledged write reads back');
    // The move is a new generation of the region's descriptor: a client that opens the region
    // by name afterwards finds the shard where it went.
    assert.ok(region.descriptor.generation >= 2, `generation ${region.descriptor.generation} after the move`);
    assert.equal(region.descriptor.shards[0]!.appliance, target);
    await region.detach();
    const reopened = await new Fabric({ token: TEST_TOKEN, appliances: urls }).open(region.name);
    assert.equal(reopened.health().shards[0]!.appliance, target);
    assert.equal(reopened.health().degraded, false);
    assert.ok((await reopened.read(0, model.length)).equals(model), 'reopened after the move');
    await reopened.close();
  }
});
