/**
 * Throughput of the NBD client (manual; not part of the tests):
 *
 *   node --import tsx test/nbd/client-bench.ts [seconds-per-run]
 *
 * Servers, each its own process on 127.0.0.1: our appliance (`memfabric appliance`, 1 GiB,
 * merging off) and, as a baseline server, `nbdkit memory 1G`. Workloads: 4 KiB random reads
 * and writes at queue depth 1 and 32, 1 MiB sequential reads and writes at depth 1 and 8. Each
 * figure is the median of 3 interleaved runs of a fixed duration; ops/s and MB/s (10^6 bytes).
 */
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { NbdClient } from '../../src/nbd/index.js';
import { freePort, spawnNbdkitMemory, spawnServer } from './client-servers.js';
import type { Spawned } from './client-servers.js';

const RUN_S = Number(process.argv[2] ?? 1.5);
const ROUNDS = 3;
const SPAN = 512 * 1024 * 1024;
const KiB = 1024;
const MiB = 1024 * KiB;

interface Workload {
  name: string;
  blockBytes: number;
  depth: number;
  write: boolean;
  random: boolean;
}

const WORKLOADS: Workload[] = [
  { name: '4k randread  qd1 ', blockBytes: 4 * KiB, depth: 1, write: false, random: true },
  { name: '4k randread  qd32', blockBytes: 4 * KiB, depth: 32, write: false, random: true },
  { name: '4k randwrite qd1 ', blockBytes: 4 * KiB, depth: 1, write: true, random: true },
  { name: '4k randwrite qd32', blockBytes: 4 * KiB, depth: 32, write: true, random: true },
  { name: '1M seqread   qd1 ', blockBytes: MiB, depth: 1, write: false, random: false },
  { name: '1M seqread   qd8 ', blockBytes: MiB, depth: 8, write: false, random: false },
  { name: '1M seqwrite  qd1 ', blockBytes: MiB, depth: 1, write: true, random: false },
  { name: '1M seqwrite  qd8 ', blockBytes: MiB, depth: 8, write: true, random: false },
];

/** Runs `w` for RUN_S seconds with `depth` workers; returns ops/s. */
async function run(client: NbdClient, w: Workload): Promise<number> {
  const blocks = SPAN / w.blockBytes;
  const payload = randomBytes(w.blockBytes);
  const deadline = performance.now() + RUN_S * 1000;
  let ops = 0;
  let next = 0;
  const worker = async (id: number): Promise<void> => {
    const dst = Buffer.allocUnsafe(w.blockBytes);
    let x = (id + 1) * 0x9e3779b1;
    while (performance.now() < deadline) {
      let block: number;
      if (w.random) {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        block = (x >>> 0) % blocks;
      } else {
        block = next++ % blocks;
      }
      const offset = block * w.blockBytes;
      if (w.write) await client.write(offset, payload);
      else await client.readInto(offset, dst);
      ops++;
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: w.depth }, (_, i) => worker(i)));
  return ops / ((performance.now() - started) / 1000);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

async function startAppliance(): Promise<Spawned> {
  const port = await freePort();
  const http = await freePort();
  const bin = fileURLToPath(new URL('../../bin/memfabric.js', import.meta.url));
  return spawnServer(
    process.execPath,
    [
      bin,
      'appliance',
      '--nbd',
      `127.0.0.1:${port}`,
      '--http',
      `127.0.0.1:${http}`,
      '--memory',
      '1GiB',
      '--no-merge',
      '--log-level',
      'warn',
    ],
    port,
  );
}

async function main(): Promise<void> {
  const servers: Array<[string, Spawned]> = [
    ['appliance', await startAppliance()],
    ['nbdkit', await spawnNbdkitMemory('1G')],
  ];
  try {
    const clients = new Map<string, NbdClient>();
    for (const [name, server] of servers) {
      const client = await NbdClient.connect({ port: server.port });
      // Fill the span once so reads hit allocated memory, not holes.
      const chunk = randomBytes(8 * MiB);
      for (let at = 0; at < SPAN; at += chunk.length) await client.write(at, chunk);
      clients.set(name, client);
    }
    console.log(`NBD client throughput, median of ${ROUNDS} interleaved runs of ${RUN_S} s`);
    console.log(`workload            ${servers.map(([n]) => `${n.padStart(22)}`).join('')}`);
    for (const w of WORKLOADS) {
      const results = new Map<string, number[]>(servers.map(([n]) => [n, []]));
      for (let round = 0; round < ROUNDS; round++) {
        for (const [name] of servers) results.get(name)?.push(await run(clients.get(name) as NbdClient, w));
      }
      const cells = servers.map(([name]) => {
        const opsPerS = median(results.get(name) as number[]);
        const mbPerS = (opsPerS * w.blockBytes) / 1e6;
        return `${Math.round(opsPerS).toString().padStart(8)} op/s ${mbPerS.toFixed(0).padStart(6)} MB/s`;
      });
      console.log(`${w.name}  ${cells.join('  ')}`);
    }
    for (const client of clients.values()) await client.disconnect();
  } finally {
    for (const [, server] of servers) await server.stop();
  }
}

await main();
