/**
 * Fault tests with real appliance processes, killed with real signals.
 *
 * The suite runs a short version; `npm run test:fault` runs the full size
 * (FAULT_REGION_MIB=256). Writers own disjoint slices of the region, so the model (what each
 * acknowledged write left behind) is exact whatever order writes complete in.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { ApplianceProcess, MiB } from '../interop/appliance-process.js';
import { stopProcess } from '../nbd/helpers.js';
import { ErrorCodes } from '../../src/index.js';
import { Fabric, type ExternalRegion, type Redundancy } from '../../src/fabric/index.js';

const REGION_MIB = Number(process.env.FAULT_REGION_MIB ?? 32);
const WRITERS = 4;
const REQUEST_TIMEOUT_MS = 1500;

async function startAppliances(count: number, t: TestContext) {
  const list = await Promise.all(
    Array.from({ length: count }, () =>
      ApplianceProcess.start({ memory: `${REGION_MIB + 64}MiB`, merge: false }),
    ),
  );
  t.after(() => Promise.all(list.map((a) => (a.alive ? a.kill() : undefined))));
  return list;
}

function byUrl(list: ApplianceProcess[], url: string): ApplianceProcess {
  return list.find((a) => a.httpUrl === url)!;
}

/** Concurrent writers, each owning a slice; `model` holds what every acknowledged write left. */
function workload(region: ExternalRegion, model: Buffer) {
  let stop = false;
  let acknowledged = 0;
  const failures: unknown[] = [];
  const slice = Math.floor(model.length / WRITERS);
  const writers = Array.from({ length: WRITERS }, async (_, w) => {
    const base = w * slice;
    for (let i = 0; !stop && i < 100_000; i++) {
      const length = 1 + Math.floor(Math.random() * 256 * 1024);
      const offset = base + Math.floor(Math.random() * (slice - length));
      const data = randomBytes(length);
      try {
        await region.write(offset, data);
        data.copy(model, offset);
        acknowledged++;
      } catch (error) {
        failures.push(error);
        return;
      }
    }
  });
  return {
    get acknowledged() {
      return acknowledged;
    },
    failures,
    async stop() {
      stop = true;
      await Promise.all(writers);
    },
  };
}

async function until(condition: () => boolean, what: string, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

async function verify(region: ExternalRegion, model: Buffer, what: string): Promise<void> {
  const chunk = 8 * MiB;
  for (let offset = 0; offset < model.length; offset += chunk) {
    const length = Math.min(chunk, model.length - offset);
    const back = await region.read(offset, length);
    if (!back.equals(model.subarray(offset, offset + length))) {
      assert.fail(`${what}: bytes at ${offset}..${offset + length} differ from what was acknowledged`);
    }
  }
}

async function killAndRebuild(t: TestContext, redundancy: Redundancy, lose: number) {
  const shards = 'copies' in (redundancy as object) ? (redundancy as { copies: number }).copies : 6;
  const appliances = await startAppliances(shards + lose, t);
  const originals = appliances.slice(0, shards);
  const spares = appliances.slice(shards);
  const fabric = new Fabric({
    token: originals[0]!.token,
    appliances: originals.map((a) => a.httpUrl),
    requestTimeoutMs: REQUEST_TIMEOUT_MS,
  });
  const size = REGION_MIB * MiB;
  const region = (await fabric.allocate({ size, redundancy })) as ExternalRegion;
  t.after(() => fabric.close());
  // The verifiable pattern: random bytes over the whole region.
  const model = randomBytes(size);
  for (let offset = 0; offset < size; offset += 8 * MiB) {
    await region.write(offset, model.subarray(offset, Math.min(size, offset + 8 * MiB)));
  }
  // SIGKILL `lose` shard holders in the middle of a write workload.
  const load = workload(region, model);
  await until(() => load.acknowledged >= 20, 'writes before the kill');
  const victims = region
    .health()
    .shards.slice(0, lose)
    .map((s) => byUrl(appliances, s.appliance));
  await Promise.all(victims.map((v) => v.kill()));
  const before = load.acknowledged;
  await until(() => load.acknowledged >= before + 20 || load.failures.length > 0, 'writes after the kill');
  await load.stop();
  assert.deepEqual(load.failures, [], 'writes go on while enough shards remain');
  assert.equal(region.health().lost, lose);
  await verify(region, model, 'after the kill');
  // Rebuild onto fresh appliances, then lose as many of the original survivors.
  assert.deepEqual(await region.rebuild({ appliances: spares.map((a) => a.httpUrl) }), { rebuilt: lose });
  assert.equal(region.health().degraded, false);
  await verify(region, model, 'after the rebuild');
  const survivors = region.health().shards.filter((s) => !spares.some((a) => a.httpUrl === s.appliance));
  await Promise.all(survivors.slice(0, lose).map((s) => byUrl(appliances, s.appliance).kill()));
  await verify(region, model, 'after losing others');
  assert.equal(region.health().lost, lose);
}

test(`coded 4+2 over six appliance processes: SIGKILL two mid-write, rebuild, SIGKILL two others (${REGION_MIB} MiB)`, async (t) => {
  await killAndRebuild(t, { data: 4, parity: 2 }, 2);
});

test(`mirrored over two appliance processes: SIGKILL one mid-write, rebuild, SIGKILL the other (${REGION_MIB} MiB)`, async (t) => {
  await killAndRebuild(t, { copies: 2 }, 1);
});

test('a hung appliance (SIGSTOP) is detected by the timeout, and when it resumes it corrupts nothing', async (t) => {
  const appliances = await startAppliances(3, t);
  const fabric = new Fabric({
    token: appliances[0]!.token,
    appliances: appliances.map((a) => a.httpUrl),
    requestTimeoutMs: REQUEST_TIMEOUT_MS,
  });
  t.after(() => fabric.close());
  const region = (await fabric.allocate({
    size: 8 * MiB,
    redundancy: { data: 2, parity: 1 },
  })) as ExternalRegion;
  const model = randomBytes(8 * MiB);
  await region.write(0, model);
  const hung = byUrl(appliances, region.health().shards[0]!.appliance);
  await stopProcess(hung.pid);
  t.after(() => {
    if (hung.alive) process.kill(hung.pid, 'SIGCONT');
  });
  const started = Date.now();
  const patch = randomBytes(MiB);
  await region.write(2 * MiB, patch); // reaches the hung shard too: waits for the timeout
  patch.copy(model, 2 * MiB);
  const waited = Date.now() - started;
  assert.ok(waited >= REQUEST_TIMEOUT_MS * 0.8, `the write waited ${waited} ms for the hung appliance`);
  assert.equal(region.health().shards[0]!.state, 'lost');
  await verify(region, model, 'while it hangs');
  // It comes back with the write it never answered still queued in its socket: nothing of it
  // is ever read again, and newer writes do not reach it.
  process.kill(hung.pid, 'SIGCONT');
  const second = randomBytes(MiB);
  await region.write(2 * MiB, second);
  second.copy(model, 2 * MiB);
  await verify(region, model, 'after it resumed');
  assert.equal(region.health().shards[0]!.state, 'lost', 'a lost shard stays lost until rebuilt');
  await assert.rejects(
    (async () => {
      await Promise.all(appliances.filter((a) => a !== hung).map((a) => a.kill()));
      await region.read(0, 4096);
    })(),
    { code: ErrorCodes.DATA_LOST },
  );
});
