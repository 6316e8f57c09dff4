/**
 * Durable fabric regions (issue 11): a region outlives the client that made it. Real appliance
 * processes, real client processes killed with SIGKILL, appliances stopped with SIGSTOP and
 * killed; every check reads the bytes back.
 */
import { after, before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface, type Interface } from 'node:readline';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ErrorCodes, NbdClient } from '../../src/index.js';
import { ApplianceDirectory, Fabric, type ExternalRegion, type Redundancy } from '../../src/fabric/index.js';
import { DESCRIPTOR_FORMAT, sealDescriptor } from '../../src/catalog/descriptor.js';
import { ApplianceProcess, MiB, waitFor } from '../interop/appliance-process.js';
import { seededBytes } from './seeded-bytes.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CLIENT = join(ROOT, 'test', 'fabric', 'durable-client.ts');
const CODED: Redundancy = { data: 4, parity: 2 };
const SIZE = 2 * MiB;

let shared: ApplianceProcess[] = [];
let token = '';

before(async () => {
  shared = await startAppliances(7);
  token = shared[0]!.token;
});
after(() => Promise.all(shared.map((a) => (a.alive ? a.kill() : undefined))));

async function startAppliances(count: number, t?: TestContext): Promise<ApplianceProcess[]> {
  const list = await Promise.all(
    Array.from({ length: count }, () => ApplianceProcess.start({ memory: '96MiB', merge: false })),
  );
  t?.after(() => Promise.all(list.map((a) => (a.alive ? a.kill() : undefined))));
  return list;
}

function fabricOn(list: ApplianceProcess[], extra: Partial<ConstructorParameters<typeof Fabric>[0]> = {}) {
  return new Fabric({ appliances: list.map((a) => a.httpUrl), token, ...extra });
}

interface Client {
  child: ChildProcess;
  lines: Interface;
  next(): Promise<Record<string, unknown>>;
  send(line: string): void;
}

/** A client process that allocates `name` and writes seededBytes(seed) over it. */
async function startClient(
  list: ApplianceProcess[],
  job: { name: string; seed: number; redundancy?: Redundancy; requestTimeoutMs?: number },
): Promise<Client> {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      CLIENT,
      JSON.stringify({
        appliances: list.map((a) => a.httpUrl),
        size: SIZE,
        redundancy: job.redundancy ?? CODED,
        ...job,
      }),
    ],
    { cwd: ROOT, env: { ...process.env, MEMFABRIC_TOKEN: token }, stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const lines = createInterface({ input: child.stdout! });
  const queue: string[] = [];
  const waiting: Array<(line: string) => void> = [];
  lines.on('line', (line) => {
    const waiter = waiting.shift();
    if (waiter) waiter(line);
    else queue.push(line);
  });
  const exited = new Promise<never>((_, reject) =>
    child.once('exit', (code, signal) => reject(new Error(`client exited (${code ?? signal}): ${stderr}`))),
  );
  exited.catch(() => undefined);
  const client: Client = {
    child,
    lines,
    next: () =>
      Promise.race([
        new Promise<Record<string, unknown>>((resolve) => {
          const line = queue.shift();
          if (line !== undefined) resolve(JSON.parse(line) as Record<string, unknown>);
          else waiting.push((l) => resolve(JSON.parse(l) as Record<string, unknown>));
        }),
        exited,
      ]),
    send: (line) => void child.stdin!.write(`${line}\n`),
  };
  const ready = await client.next();
  assert.equal(ready.ready, true);
  return client;
}

async function killClient(client: Client): Promise<void> {
  const gone = new Promise((resolve) => client.child.once('exit', resolve));
  client.child.kill('SIGKILL');
  await gone;
}

/** Regions and name claims on every appliance of `list`. */
async function leftovers(list: ApplianceProcess[]): Promise<string[]> {
  const found: string[] = [];
  for (const app of list.filter((a) => a.alive)) {
    const regions = await app.api<{ regions: Array<{ name: string }> }>('GET', '/v1/regions');
    const names = await app.api<{ names: Array<{ name: string }> }>('GET', '/v1/names');
    // Every appliance process starts with its small default region: not the fabric's.
    found.push(
      ...regions.body.regions
        .filter((r) => r.name !== 'default')
        .map((r) => `region ${r.name} on ${app.httpUrl}`),
    );
    found.push(...names.body.names.map((n) => `name ${n.name} on ${app.httpUrl}`));
  }
  return found;
}

/** Opens `name`, waiting while the appliances still count a dead client's connections. */
async function openWhenFree(fabric: Fabric, name: string): Promise<ExternalRegion> {
  let region: ExternalRegion | undefined;
  await waitFor(`${name} to be free to open`, async () => {
    try {
      region = await fabric.open(name);
      return true;
    } catch (error) {
      if ((error as { code?: string }).code === ErrorCodes.BUSY) return false;
      throw error;
    }
  });
  return region!;
}

async function assertBytes(region: ExternalRegion, seed: number, what: string): Promise<void> {
  assert.ok((await region.read(0, SIZE)).equals(seededBytes(seed, SIZE)), `${what}: every byte reads back`);
}

test('a coded 4+2 region outlives its client: SIGKILLed, reopened by name in another process', async () => {
  const client = await startClient(shared.slice(0, 6), { name: 'survivor', seed: 11 });
  const fabric = fabricOn(shared);
  // While its client lives, the region is that client's: a second opener is refused.
  await assert.rejects(fabric.open('survivor'), (error: { code?: string }) => error.code === ErrorCodes.BUSY);
  await killClient(client);

  const listed = await fabric.list();
  const entry = listed.find((r) => r.name === 'survivor');
  assert.ok(entry, 'listed by name');
  assert.equal(entry.state, 'ready');
  assert.deepEqual(entry.shardsFound, [0, 1, 2, 3, 4, 5], 'every shard carries the descriptor');

  const region = await openWhenFree(fabric, 'survivor');
  assert.equal(region.health().degraded, false);
  assert.deepEqual(region.redundancy, CODED);
  await assertBytes(region, 11, 'reopened');
  await region.write(SIZE - 100, Buffer.alloc(100, 7)); // usable, not just readable
  await region.detach();

  const again = await fabricOn(shared).open('survivor');
  const expected = seededBytes(11, SIZE);
  expected.fill(7, SIZE - 100);
  assert.ok((await again.read(0, SIZE)).equals(expected), 'a write after the reopen is kept too');
  await again.close();
  assert.deepEqual(await leftovers(shared), [], 'close leaves no shard and no name behind');
});

test('names are unique: two clients racing for one name, one wins, nothing is left behind', async () => {
  for (let round = 0; round < 4; round++) {
    const a = fabricOn(shared.slice(0, 6));
    const b = fabricOn([...shared.slice(1, 7)].reverse()); // other order, other appliances
    const results = await Promise.allSettled([
      a.allocate({ size: SIZE, redundancy: { data: 2, parity: 1 }, name: 'contested' }),
      b.allocate({ size: SIZE, redundancy: { data: 2, parity: 1 }, name: 'contested' }),
    ]);
    const won = results.filter((r) => r.status === 'fulfilled');
    const lost = results.filter((r) => r.status === 'rejected');
    assert.equal(won.length, 1, `round ${round}: exactly one wins`);
    assert.equal((lost[0] as PromiseRejectedResult).reason.code, ErrorCodes.ALREADY_EXISTS);
    await assert.rejects(
      a.allocate({ size: SIZE, name: 'contested' }),
      (error: { code?: string }) => error.code === ErrorCodes.ALREADY_EXISTS,
    );
    await ((won[0] as PromiseFulfilledResult<ExternalRegion>).value as ExternalRegion).close();
    assert.deepEqual(await leftovers(shared), [], `round ${round}: nothing left behind`);
  }
});

test('a half-made region (its client died while allocating) is collected by the next allocation', async () => {
  // What a client killed between its first shards and "ready" leaves: a claim and shards in
  // state creating. Made here through the same admin calls, so the state is exact.
  const urls = shared.slice(0, 3).map((a) => a.httpUrl);
  const directory = new ApplianceDirectory(urls, 5000, { token });
  const states = await directory.refresh();
  const dead = sealDescriptor({
    format: DESCRIPTOR_FORMAT,
    id: 'deadbeefdeadbeef',
    name: 'halfmade',
    tenant: 'default',
    size: SIZE,
    pageSize: 4096,
    redundancy: { data: 2, parity: 1 },
    generation: 0,
    state: 'creating',
    shards: states.map((s, index) => ({
      index,
      appliance: s.url,
      region: `halfmade-${index}`,
      nbd: s.nbd,
      state: 'live',
    })),
    createdAt: Date.now(),
  });
  for (const url of [...urls].sort())
    await directory.claimName(url, { tenant: 'default', name: 'halfmade', id: dead.id });
  for (const shard of dead.shards.slice(0, 2)) {
    await directory.createRegion(shard.appliance, {
      name: shard.region,
      size: SIZE / 2,
      tenant: 'default',
      descriptor: dead,
    });
  }
  // Within the grace period the name is still taken: its client may be allocating.
  await assert.rejects(
    fabricOn(shared.slice(0, 3)).allocate({
      size: SIZE,
      name: 'halfmade',
      redundancy: { data: 2, parity: 1 },
    }),
    (error: { code?: string }) => error.code === ErrorCodes.ALREADY_EXISTS,
  );
  assert.equal(
    (await fabricOn(shared.slice(0, 3)).list()).find((r) => r.name === 'halfmade')?.state,
    'creating',
  );
  await assert.rejects(
    fabricOn(shared.slice(0, 3)).open('halfmade'),
    (error: { code?: string }) => error.code === ErrorCodes.NOT_FOUND,
  );

  const fabric = fabricOn(shared.slice(0, 3), { halfMadeGraceMs: 0 });
  const region = (await fabric.allocate({
    size: SIZE,
    name: 'halfmade',
    redundancy: { data: 2, parity: 1 },
  })) as ExternalRegion;
  assert.notEqual(region.id, dead.id);
  const ids = new Set((await fabric.list()).filter((r) => r.name === 'halfmade').map((r) => r.id));
  assert.deepEqual([...ids], [region.id], 'only the new region is left under the name');
  await region.close();
  assert.deepEqual(await leftovers(shared), []);
});

test('a shard that missed writes is never read again, even when its appliance comes back', async (t) => {
  const list = await startAppliances(7, t);
  const client = await startClient(list.slice(0, 6), { name: 'stale', seed: 21, requestTimeoutMs: 1000 });
  const fabric = fabricOn(list);
  const before = (await fabric.list()).find((r) => r.name === 'stale')!;
  // Hang the appliance of data shard 0, so the next write goes on without it.
  const hung = list.find((a) => a.httpUrl === before.shards[0]!.appliance)!;
  process.kill(hung.pid, 'SIGSTOP');
  t.after(() => (hung.alive ? process.kill(hung.pid, 'SIGCONT') : undefined));
  client.send('write 22');
  assert.deepEqual(await client.next(), { written: 22 });
  process.kill(hung.pid, 'SIGCONT');
  await killClient(client);

  const region = await openWhenFree(fabric, 'stale');
  assert.equal(region.health().shards[0]!.state, 'lost', 'recorded lost before the write was acknowledged');
  assert.ok(region.descriptor.generation > before.generation);
  await assertBytes(region, 22, 'with shard 0 back but stale');
  const { rebuilt } = await region.rebuild();
  assert.equal(rebuilt, 1);
  const rebuiltGeneration = region.descriptor.generation;
  await region.detach();

  const healed = await fabricOn(list).open('stale');
  assert.equal(healed.health().degraded, false);
  assert.equal(healed.descriptor.generation, rebuiltGeneration);
  assert.notEqual(healed.health().shards[0]!.appliance, hung.httpUrl, 'rebuilt elsewhere');
  await assertBytes(healed, 22, 'after the rebuild');
  await healed.close();
});

test("reopened degraded with one shard's appliance dead, rebuilt, and reopened healthy", async (t) => {
  const list = await startAppliances(7, t);
  const client = await startClient(list.slice(0, 6), { name: 'degraded', seed: 31 });
  client.send('detach');
  assert.deepEqual(await client.next(), { detached: true });
  const fabric = fabricOn(list);
  const placed = (await fabric.list()).find((r) => r.name === 'degraded')!;
  await list.find((a) => a.httpUrl === placed.shards[2]!.appliance)!.kill();

  const region = await fabric.open('degraded');
  assert.equal(region.health().lost, 1);
  await assertBytes(region, 31, 'degraded');
  await region.rebuild();
  await region.detach();
  const healed = await fabricOn(list.filter((a) => a.alive)).open('degraded');
  assert.equal(healed.health().degraded, false);
  await assertBytes(healed, 31, 'after the rebuild');
  await healed.close();
});

test('collect: stale shards and half-made regions are deleted; nothing in use is touched', async () => {
  const list = shared.slice(0, 4);
  const urls = list.map((a) => a.httpUrl);
  const fabric = fabricOn(list.slice(0, 3), { halfMadeGraceMs: 0 });
  const region = (await fabric.allocate({
    size: SIZE,
    redundancy: { data: 2, parity: 1 },
    name: 'leftovers',
  })) as ExternalRegion;
  await region.write(0, seededBytes(41, SIZE));
  // What a rebuild leaves when the replaced shard's appliance was away and came back later: a
  // shard carrying an old generation of the region that the newest generation does not list.
  // And what a client killed mid-allocation leaves: a claim and a shard still `creating`.
  // Both made through the same admin calls the fabric uses, so the state is exact.
  const directory = new ApplianceDirectory(urls, 5000, { token });
  await directory.createRegion(urls[3]!, {
    name: 'leftovers-0-old',
    size: SIZE / 2,
    tenant: 'default',
    descriptor: region.descriptor,
  });
  const states = await directory.refresh();
  const dead = sealDescriptor({
    ...region.descriptor,
    id: 'deadbeefdeadbeef',
    name: 'abandoned',
    generation: 0,
    state: 'creating',
    shards: [{ index: 0, appliance: urls[3]!, region: 'abandoned-0', nbd: states[3]!.nbd, state: 'live' }],
    createdAt: Date.now() - 1000,
  });
  for (const url of [...urls].sort())
    await directory.claimName(url, { tenant: 'default', name: 'abandoned', id: dead.id });
  await directory.createRegion(urls[3]!, {
    name: 'abandoned-0',
    size: SIZE,
    tenant: 'default',
    descriptor: dead,
  });

  const collector = fabricOn(list, { halfMadeGraceMs: 0 });
  // A shard with an NBD connection is in use, whatever its descriptor says.
  const user = await NbdClient.connect({ ...states[3]!.nbd, exportName: 'leftovers-0-old' });
  assert.deepEqual(
    (await collector.collect({ dryRun: true })).collected.map((g) => g.region),
    ['abandoned-0'],
    'a connected shard is never garbage',
  );
  await user.disconnect();
  const dry = await collector.collect({ dryRun: true });
  assert.deepEqual(
    dry.collected.map((g) => [g.kind, g.region]).sort(),
    [
      ['half-made', 'abandoned-0'],
      ['stale', 'leftovers-0-old'],
    ],
    'exactly the leftovers; the region in use is not garbage',
  );
  assert.equal(
    (await list[3]!.api('GET', '/v1/regions/leftovers-0-old')).status,
    200,
    'a dry run deletes nothing',
  );
  const done = await collector.collect();
  assert.equal(done.collected.length, 2);
  assert.deepEqual(done.failed, []);
  assert.equal((await list[3]!.api('GET', '/v1/regions/leftovers-0-old')).status, 404);
  assert.deepEqual((await collector.collect({ dryRun: true })).collected, []);
  // The half-made region's name is free again.
  const reused = await collector.allocate({ size: SIZE, name: 'abandoned' });
  await reused.close();
  await assertBytes(region, 41, 'the region in use is untouched');
  await region.close();
  assert.deepEqual(await leftovers(shared), []);
});
