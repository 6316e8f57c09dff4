/**
 * The source process of the post-copy bench (a source must not share the destination's thread:
 * a fault blocks it). Driven over IPC by postcopy.bench.ts:
 *   { cmd: 'build', bytes }                         a space of that many bytes, every page data
 *   { cmd: 'postcopy', port, migrationId, paced }   migrates it post-copy to 127.0.0.1:port
 *   { cmd: 'stopcopy', port }                       stop-and-copy: gate, send every page, then switch
 *   { cmd: 'push', batches }                        with paced: lets more push batches go
 * and answers { type: 'built' }, { type: 'hello', hello }, { type: 'done', report }, { type: 'failed', message }.
 */
import { FramePool } from '../src/memory/frame-pool.js';
import { AddressSpace } from '../src/memory/address-space.js';
import { MessageConnection } from '../src/migrate/connection.js';
import { runPostCopySource } from '../src/migrate/postcopy-source.js';
import { PAGE_DATA, PageBatchWriter, encodeFrame } from '../src/migrate/wire.js';
import { MemfabricError, ErrorCodes } from '../src/errors.js';

/** Stop-and-copy's own two message types (in post-copy's range, never mixed with it). */
export const SC_PAGES = 60;
export const SC_DONE = 61;
export const SC_RESUMED = 62;
const PAGE = 4096;

let space: AddressSpace | undefined;
let tokens = 0;
let tokenWaiter: (() => void) | undefined;

function send(message: unknown): void {
  process.send!(message);
}

function build(bytes: number): void {
  space?.destroy();
  const pool = new FramePool({ pageSize: PAGE, capacity: bytes + 64 * PAGE });
  space = new AddressSpace(pool, { size: bytes });
  const chunk = Buffer.alloc(256 * PAGE);
  for (let i = 0; i < chunk.length; i += 4) chunk.writeUInt32LE((i * 2654435761) >>> 0, i);
  const pages = bytes / PAGE;
  for (let page = 0; page < pages; page += 256) {
    if (page % 4096 === 0) space.advanceEpoch();
    for (let i = 0; i < 256; i++) chunk.writeUInt32LE(page + i, i * PAGE);
    space.write(page * PAGE, chunk.subarray(0, Math.min(256, pages - page) * PAGE));
  }
}

async function postcopy(port: number, migrationId: string, paced: boolean): Promise<void> {
  const source = space!.fork();
  tokens = 0;
  const connection = await MessageConnection.connect({ host: '127.0.0.1', port });
  send({ type: 'hello', hello: { migrationId, size: source.size, pageSize: PAGE, epoch: source.epoch } });
  const report = await runPostCopySource(source, connection, {
    migrationId,
    ...(paced
      ? {
          pace: async () => {
            while (tokens === 0) await new Promise<void>((resolve) => (tokenWaiter = resolve));
            tokens--;
          },
        }
      : {}),
  });
  source.destroy();
  send({ type: 'done', report });
}

/** Stop-and-copy: writes stop, every page goes, then the destination resumes. */
async function stopcopy(port: number): Promise<void> {
  const source = space!.fork();
  const connection = await MessageConnection.connect({ host: '127.0.0.1', port });
  const resumed = new Promise<void>((resolve) =>
    connection.onMessage((type) => type === SC_RESUMED && resolve()),
  );
  const started = performance.now();
  source.writeGate = {
    admit: () => {
      throw new MemfabricError(ErrorCodes.MIGRATING, 'stop-and-copy under way');
    },
    dirtied: () => undefined,
  };
  const writer = new PageBatchWriter({ pageSize: PAGE, maxDataPages: 256 });
  for (let page = 0; page < source.pages;) {
    writer.reset();
    for (; page < source.pages && writer.fits(page, PAGE_DATA); page++) {
      writer.add(page, PAGE_DATA)!.set(source.borrowPageForRead(page));
    }
    await connection.send(writer.seal(SC_PAGES));
  }
  await connection.send(encodeFrame(SC_DONE));
  await resumed;
  const downtimeMs = performance.now() - started;
  await connection.close();
  source.destroy();
  send({ type: 'done', report: { switchoverMs: downtimeMs, totalMs: downtimeMs } });
}

// The bench imports the message types above: only a forked child serves.
if (process.send !== undefined)
  process.on('message', (message: { cmd: string; [key: string]: unknown }) => {
    const run = async (): Promise<void> => {
      switch (message.cmd) {
        case 'build':
          build(message.bytes as number);
          send({ type: 'built' });
          return;
        case 'postcopy':
          return postcopy(message.port as number, message.migrationId as string, message.paced === true);
        case 'stopcopy':
          return stopcopy(message.port as number);
        case 'push':
          tokens += message.batches as number;
          tokenWaiter?.();
          return;
        case 'exit':
          process.exit(0);
      }
    };
    run().catch((error: unknown) => send({ type: 'failed', message: (error as Error).message }));
  });
if (process.send !== undefined) send({ type: 'ready' });
