/**
 * One client process of the concurrent sub-allocation test (suballocation.test.ts):
 *
 *   MEMFABRIC_TOKEN=… node --import tsx test/fabric/suballocation-worker.ts <admin-url> <region> <owner> <chunk-size>
 *        <claims-max> <deadline-ms>
 *
 * Prints {"ready":true} once loaded and waits for a line on stdin, so that every worker starts
 * claiming at the same moment. Then, as fast as it can, until it has made `claims-max` claims,
 * the deadline passes, or claims keep failing with MF_CHUNKS_EXHAUSTED: claims 1-3 chunks,
 * fills them with its pattern over NBD through a bounded view, and releases every fourth
 * claim again (so chunks move between processes). Prints one JSON report line: the chunks it
 * still holds, and counts.
 */
import { createInterface } from 'node:readline';
import { ErrorCodes, MemfabricError } from '../../src/index.js';
import { SubAllocator, type Chunk } from '../../src/fabric/suballocation.js';

/** Consecutive MF_CHUNKS_EXHAUSTED answers after which a worker stops. */
const EXHAUSTED_IN_A_ROW_MAX = 5;

/** The bytes a worker writes into a chunk it holds: its owner name and the chunk's offset. */
export function chunkPattern(owner: string, offset: number, length: number): Buffer {
  const unit = Buffer.from(`${owner}@${offset};`);
  const out = Buffer.allocUnsafe(length);
  for (let at = 0; at < length; at += unit.length) unit.copy(out, at, 0, Math.min(unit.length, length - at));
  return out;
}

export interface WorkerReport {
  owner: string;
  held: Array<{ offset: number; length: number }>;
  claims: number;
  releases: number;
  exhausted: number;
  elapsedMs: number;
}

async function main(): Promise<void> {
  const [url, region, owner, chunkSize, claimsMaxText, deadlineMsText] = process.argv.slice(2);
  const claimsMax = Number(claimsMaxText);
  const deadline = Date.now() + Number(deadlineMsText);
  const sub = new SubAllocator({
    appliance: url!,
    region: region!,
    owner: owner!,
    chunkSize: Number(chunkSize),
    ...(process.env.MEMFABRIC_TOKEN ? { token: process.env.MEMFABRIC_TOKEN } : {}),
  });

  const lines = createInterface({ input: process.stdin });
  const go = new Promise<void>((resolve) => lines.once('line', () => resolve()));
  process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
  await go;
  lines.close();

  const startedAt = performance.now();
  const held: Chunk[] = [];
  let claims = 0;
  let releases = 0;
  let exhausted = 0;
  let exhaustedInARow = 0;
  while (claims < claimsMax && Date.now() < deadline && exhaustedInARow < EXHAUSTED_IN_A_ROW_MAX) {
    let chunk: Chunk;
    try {
      chunk = await sub.claim({ count: 1 + (claims % 3) });
    } catch (error) {
      if (!(error instanceof MemfabricError) || error.code !== ErrorCodes.CHUNKS_EXHAUSTED) throw error;
      exhausted++;
      exhaustedInARow++;
      // Someone else may release chunks meanwhile: give their requests a turn, then retry.
      await new Promise((resolve) => setImmediate(resolve));
      continue;
    }
    exhaustedInARow = 0;
    claims++;
    const view = await chunk.open();
    await view.write(0, chunkPattern(owner!, chunk.offset, chunk.length));
    if (claims % 4 === 0) {
      await chunk.release();
      releases++;
    } else {
      held.push(chunk);
    }
  }
  await sub.close();
  const report: WorkerReport = {
    owner: owner!,
    held: held.map((chunk) => ({ offset: chunk.offset, length: chunk.length })),
    claims,
    releases,
    exhausted,
    elapsedMs: Math.round(performance.now() - startedAt),
  };
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

if (process.argv[1]?.endsWith('suballocation-worker.ts')) {
  main().catch((error: unknown) => {
    process.stderr.write(`${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exit(1);
  });
}
