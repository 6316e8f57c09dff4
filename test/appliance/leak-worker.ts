/**
 * One client process of the shard-leak test (leak.test.ts):
 *
 *   MEMFABRIC_TOKEN=… node --import tsx test/appliance/leak-worker.ts <admin-urls,comma-separated>
 *        <worker-name> <rounds> <deadline-ms>
 *
 * Runs `rounds` allocate/write/read/close rounds through the public Fabric API (coded 2+1 and
 * 4+2 in turn), stopping early at the deadline, and prints one JSON report line (WorkerReport).
 * A round whose bytes do not read back or whose close() rejects is reported, not retried: the
 * test counts the regions every appliance holds afterwards.
 */
import { Fabric, type MemfabricError, type Redundancy } from '../../src/index.js';

export interface LeakReport {
  worker: string;
  rounds: number;
  /** close() rejections (code and message); each names the shards it left behind. */
  closeFailures: Array<{ code: string; message: string }>;
  /** Rounds whose bytes did not read back as written. */
  mismatches: number;
  elapsedMs: number;
}

const REDUNDANCIES: Redundancy[] = [
  { data: 2, parity: 1 },
  { data: 4, parity: 2 },
];
const REGION_BYTES = 512 * 1024;

async function main(): Promise<void> {
  const [urls, worker, roundsText, deadlineText] = process.argv.slice(2);
  const rounds = Number(roundsText);
  const deadline = Date.now() + Number(deadlineText);
  const started = Date.now();
  const fabric = new Fabric({
    appliances: urls!.split(','),
    ...(process.env.MEMFABRIC_TOKEN ? { token: process.env.MEMFABRIC_TOKEN } : {}),
    requestTimeoutMs: 10_000,
  });
  const report: LeakReport = { worker: worker!, rounds: 0, closeFailures: [], mismatches: 0, elapsedMs: 0 };
  const data = Buffer.alloc(REGION_BYTES);
  try {
    for (let round = 0; round < rounds && Date.now() < deadline; round++) {
      const region = await fabric.allocate({
        size: REGION_BYTES,
        redundancy: REDUNDANCIES[round % REDUNDANCIES.length]!,
        name: `${worker}-r${round}`,
      });
      data.fill((round * 31 + worker!.length) & 0xff);
      data.writeUInt32LE(round, 0);
      await region.write(0, data);
      if (!(await region.read(0, REGION_BYTES)).equals(data)) report.mismatches++;
      try {
        await region.close();
      } catch (error) {
        const e = error as MemfabricError;
        report.closeFailures.push({ code: e.code ?? 'unknown', message: e.message });
      }
      report.rounds++;
    }
  } finally {
    report.elapsedMs = Date.now() - started;
    await fabric.close().catch(() => undefined);
    process.stdout.write(`${JSON.stringify(report)}\n`);
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
