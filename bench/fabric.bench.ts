/**
 * Fabric figures (issue: fabric client), over real appliance processes on loopback: coded (4+2)
 * and mirrored (2 copies) throughput beside plain writes to one appliance, the coder's raw
 * throughput beside the coding inside our write path, and degraded 4 KiB read latency beside
 * healthy reads of the same pages.
 */
import { randomBytes } from 'node:crypto';
import { ApplianceProcess } from '../test/interop/appliance-process.js';
import {
  Fabric,
  ReedSolomonCodec,
  SendRuns,
  StripeBatch,
  type ExternalRegion,
  type Redundancy,
} from '../src/fabric/index.js';
import { BATCH_STRIPES } from '../src/fabric/external-region.js';
import { NbdClient } from '../src/nbd/index.js';
import { median, percentile, type BenchContext, type Suite } from './harness.js';

const MiB = 1024 * 1024;
const PAGE = 4096;
const CHUNK = MiB;
const DEPTH = 8;

/** Sequential CHUNK-sized I/O over the region with DEPTH requests in flight; MB/s. */
async function sequential(
  region: ExternalRegion,
  bytes: number,
  write: boolean,
  data: Buffer,
): Promise<number> {
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: DEPTH }, async () => {
      const scratch = Buffer.alloc(CHUNK);
      for (let offset = next; offset < bytes; offset = next) {
        next += CHUNK;
        if (write)
          await region.write(offset, data.subarray(offset % data.length, (offset % data.length) + CHUNK));
        else await region.readInto(offset, scratch);
      }
    }),
  );
  return bytes / ((performance.now() - started) / 1000) / 1e6;
}

/**
 * The floor under a coded region's figures, without our fabric code: plain NBD calls to the
 * appliances holding its shards. `depth` 1 MiB writes sent as six 256 KiB writes to six
 * appliances at once (what a 4+2 write sends, uncoded), MB/s of data.
 */
async function fanOutWrites(clients: NbdClient[], bytes: number, data: Buffer): Promise<number> {
  const shard = CHUNK / 4;
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: DEPTH }, async () => {
      for (let offset = next; offset < bytes; offset = next) {
        next += CHUNK;
        const at = offset % data.length;
        await Promise.all(
          clients.map((client, i) =>
            client.write(offset / 4, data.subarray(at + (i % 4) * shard, at + ((i % 4) + 1) * shard)),
          ),
        );
      }
    }),
  );
  return bytes / ((performance.now() - started) / 1000) / 1e6;
}

/** 4 KiB reads of column `page / 4` from every client at once, one round at a time; µs, sorted. */
async function fanOutReads(clients: NbdClient[], pages: number[]): Promise<Float64Array> {
  const out = new Float64Array(pages.length);
  const scratch = clients.map(() => Buffer.alloc(PAGE));
  for (const [i, page] of pages.entries()) {
    const started = performance.now();
    await Promise.all(clients.map((client, n) => client.readInto((page / 4) * PAGE, scratch[n]!)));
    out[i] = (performance.now() - started) * 1000;
  }
  return out.sort();
}

/** 4 KiB reads, one at a time, of the given pages; latencies in µs, sorted. */
async function latencies(region: ExternalRegion, pages: number[]): Promise<Float64Array> {
  const out = new Float64Array(pages.length);
  const scratch = Buffer.alloc(PAGE);
  for (const [i, page] of pages.entries()) {
    const started = performance.now();
    await region.readInto(page * PAGE, scratch);
    out[i] = (performance.now() - started) * 1000;
  }
  return out.sort();
}

/**
 * Coding throughput in GB/s of data. `withPath`: what a write of whole stripes does, on the event
 * loop: parity coded from the caller's bytes straight into the runs it sends (SendRuns.codeWhole;
 * data pages are sent from the caller's buffer, uncopied), one BATCH_STRIPES batch per call.
 * Without it, the coder alone on the same bytes gathered into its layout: ronomon's encode in the
 * thread pool, 4 calls in flight.
 */
async function coding(context: BenchContext, withPath: boolean): Promise<number> {
  const codec = new ReedSolomonCodec(4, 2);
  const runs = new SendRuns(2, PAGE, BATCH_STRIPES);
  const stripes = BATCH_STRIPES;
  const source = randomBytes(stripes * 4 * PAGE);
  const bytesPerCall = stripes * 4 * PAGE;
  const calls = context.quick ? 1000 : 4000;
  if (withPath) {
    const started = performance.now();
    for (let call = 0; call < calls; call++) runs.codeWhole(codec, source, 0, stripes);
    return (calls * bytesPerCall) / ((performance.now() - started) / 1000) / 1e9;
  }
  const batches = Array.from({ length: 4 }, () => new StripeBatch(codec, PAGE, BATCH_STRIPES));
  for (const batch of batches) {
    batch.reset(stripes);
    for (let s = 0; s < stripes; s++)
      for (let i = 0; i < 4; i++) batch.putPage(s, i, source, (s * 4 + i) * PAGE);
  }
  let issued = 0;
  const started = performance.now();
  await Promise.all(
    batches.map(async (batch) => {
      while (issued++ < calls) await batch.encode();
    }),
  );
  return (calls * bytesPerCall) / ((performance.now() - started) / 1000) / 1e9;
}

export const fabricSuite: Suite = {
  name: 'fabric',
  async run(context) {
    const regionBytes = (context.quick ? 64 : 256) * MiB;
    // One at a time: six starting at once on a loaded 2-core machine (each compiling its source)
    // can miss the start deadline.
    const appliances: ApplianceProcess[] = [];
    try {
      for (let i = 0; i < 6; i++) {
        appliances.push(
          await ApplianceProcess.start({ memory: `${regionBytes / MiB + 64}MiB`, merge: false }),
        );
      }
    } catch (error) {
      await Promise.all(appliances.map((a) => a.stop()));
      throw error;
    }
    try {
      const fabric = new Fabric({
        appliances: appliances.map((a) => a.httpUrl),
        token: appliances[0]!.token,
        requestTimeoutMs: 30_000,
      });
      const kinds: Array<[string, Redundancy]> = [
        ['plain', 'none'],
        ['coded 4+2', { data: 4, parity: 2 }],
        ['mirrored x2', { copies: 2 }],
      ];
      const regions = new Map<string, ExternalRegion>();
      for (const [name, redundancy] of kinds) {
        regions.set(name, (await fabric.allocate({ size: regionBytes, redundancy })) as ExternalRegion);
      }
      const data = randomBytes(16 * MiB);
      const coded = regions.get('coded 4+2')!;
      // Plain NBD connections to the coded region's shards, for the floors (no fabric code).
      const shardClients = await Promise.all(
        coded.health().shards.map((shard) =>
          NbdClient.connect({
            port: appliances.find((a) => a.httpUrl === shard.appliance)!.nbdPort,
            exportName: shard.region,
          }),
        ),
      );
      const writes = new Map<string, number[]>();
      const reads = new Map<string, number[]>();
      const fanOut: number[] = [];
      for (let r = 0; r < context.repeats; r++) {
        // Before the coded writes of the round, which rewrite every byte it wrote uncoded.
        fanOut.push(await fanOutWrites(shardClients, regionBytes, data));
        for (const [name] of kinds) {
          const region = regions.get(name)!;
          (writes.get(name) ?? writes.set(name, []).get(name)!).push(
            await sequential(region, regionBytes, true, data),
          );
          (reads.get(name) ?? reads.set(name, []).get(name)!).push(
            await sequential(region, regionBytes, false, data),
          );
        }
      }
      const plainWrite = median(writes.get('plain')!);
      const plainRead = median(reads.get('plain')!);
      for (const [name] of kinds.slice(1)) {
        context.record({
          id: `fabric ${name} sequential 1 MiB writes (QD${DEPTH})`,
          unit: 'MB/s',
          value: median(writes.get(name)!),
          baseline: 'plain writes to one appliance',
          baselineValue: plainWrite,
          higherIsBetter: true,
          goal: name.startsWith('coded') ? '>= 0.6x' : '',
        });
        context.record({
          id: `fabric ${name} sequential 1 MiB reads (QD${DEPTH})`,
          unit: 'MB/s',
          value: median(reads.get(name)!),
          baseline: 'plain reads from one appliance',
          baselineValue: plainRead,
          higherIsBetter: true,
        });
      }
      context.record({
        id: `floor: 1 MiB writes as six 256 KiB NBD writes to six appliances, uncoded (QD${DEPTH})`,
        unit: 'MB/s',
        value: median(fanOut),
        baseline: 'plain writes to one appliance',
        baselineValue: plainWrite,
        higherIsBetter: true,
      });
      const [inPath, raw] = [[] as number[], [] as number[]];
      for (let r = 0; r < context.repeats; r++) {
        inPath.push(await coding(context, true));
        raw.push(await coding(context, false));
      }
      context.record({
        id: 'Reed-Solomon 4+2 coding as the write path does it (whole stripes, on the event loop)',
        unit: 'GB/s',
        value: median(inPath),
        baseline: 'raw @ronomon/reed-solomon encode, same bytes, 4 in flight (thread pool)',
        baselineValue: median(raw),
        higherIsBetter: true,
        goal: '>= 3 GB/s',
      });
      // Degraded reads: 4 KiB pages of data shard 0, read healthy, then with its appliance killed.
      const pages = Array.from(
        { length: context.quick ? 1000 : 4000 },
        () => 4 * Math.floor(Math.random() * (regionBytes / PAGE / 4)),
      );
      await latencies(coded, pages.slice(0, 200)); // warm up
      const healthy = await latencies(coded, pages);
      const victim = appliances.find((a) => a.httpUrl === coded.health().shards[0]!.appliance)!;
      await victim.kill();
      await latencies(coded, pages.slice(0, 50)); // notice the loss
      // The floor under a degraded read: the same 4 KiB column read from the four live shards
      // it uses (data 1..3, parity 4) at once, beside one read from one of them. Taken page by
      // page in turn with the degraded reads, so that all three see the same moments of load.
      const live = shardClients.slice(1, 5);
      const degraded = new Float64Array(pages.length);
      const one = new Float64Array(pages.length);
      const four = new Float64Array(pages.length);
      for (const [i, page] of pages.entries()) {
        degraded[i] = (await latencies(coded, [page]))[0]!;
        one[i] = (await fanOutReads(live.slice(0, 1), [page]))[0]!;
        four[i] = (await fanOutReads(live, [page]))[0]!;
      }
      for (const sample of [degraded, one, four]) sample.sort();
      for (const [label, fraction] of [
        ['p50', 0.5],
        ['p99', 0.99],
      ] as const) {
        context.record({
          id: `fabric coded 4+2 degraded 4 KiB read latency ${label}`,
          unit: 'µs',
          value: percentile(degraded, fraction),
          baseline: `healthy 4 KiB reads of the same pages ${label}`,
          baselineValue: percentile(healthy, fraction),
          higherIsBetter: false,
          goal: '<= 2x',
        });
        context.record({
          id: `floor: four 4 KiB NBD reads to four appliances at once ${label}`,
          unit: 'µs',
          value: percentile(four, fraction),
          baseline: `one 4 KiB NBD read ${label}`,
          baselineValue: percentile(one, fraction),
          higherIsBetter: false,
        });
      }
      context.log(
        `coded region: ${coded.stats().degradedReads} degraded reads; health ${JSON.stringify(coded.health().lost)} lost`,
      );
      await Promise.all(shardClients.slice(1).map((client) => client.disconnect()));
      shardClients[0]!.destroy();
      await fabric.close();
    } finally {
      await Promise.all(appliances.map((a) => (a.alive ? a.stop() : undefined)));
    }
  },
};
