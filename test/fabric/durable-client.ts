/**
 * A fabric client in its own process, for the durable-region tests (durable.test.ts):
 *
 *   MEMFABRIC_TOKEN=… node --import tsx test/fabric/durable-client.ts '<json>'
 *
 * where json is { appliances, name, size, redundancy, seed, requestTimeoutMs? }. Allocates the
 * region, writes seededBytes(seed, size) over it, prints {"ready":true,"id":…} and then waits to
 * be killed. A line "write <seed>" on stdin overwrites the whole region with seededBytes(seed)
 * and answers {"written":seed} (or {"error":code}); "detach" detaches and exits.
 */
import { createInterface } from 'node:readline';
import { Fabric, type ExternalRegion, type Redundancy } from '../../src/fabric/index.js';
import { MemfabricError } from '../../src/index.js';
import { seededBytes } from './seeded-bytes.js';

interface Job {
  appliances: string[];
  name: string;
  size: number;
  redundancy: Redundancy;
  seed: number;
  requestTimeoutMs?: number;
}

const job = JSON.parse(process.argv[2]!) as Job;
const fabric = new Fabric({
  appliances: job.appliances,
  ...(process.env.MEMFABRIC_TOKEN ? { token: process.env.MEMFABRIC_TOKEN } : {}),
  ...(job.requestTimeoutMs !== undefined ? { requestTimeoutMs: job.requestTimeoutMs } : {}),
});
const region = (await fabric.allocate({
  size: job.size,
  redundancy: job.redundancy,
  name: job.name,
})) as ExternalRegion;
await region.write(0, seededBytes(job.seed, job.size));
const say = (line: unknown): void => void process.stdout.write(`${JSON.stringify(line)}\n`);
say({ ready: true, id: region.id });

for await (const line of createInterface({ input: process.stdin })) {
  const [command, argument] = line.trim().split(' ');
  if (command === 'write') {
    const seed = Number(argument);
    try {
      await region.write(0, seededBytes(seed, job.size));
      say({ written: seed });
    } catch (error) {
      say({ error: error instanceof MemfabricError ? error.code : String(error) });
    }
  } else if (command === 'detach') {
    await region.detach();
    say({ detached: true });
    process.exit(0);
  }
}
