/**
 * One side of a live migration in its own process, for the kill tests (migrate-kill.test.ts):
 *
 *   node --import tsx test/migrate/migrate-child.ts dest
 *     listens on 127.0.0.1, prints {"port"}, receives one migration into a space; prints
 *     {"received":true,"epoch"} once it owns it (or {"failed":code}), then waits to be killed.
 *   node --import tsx test/migrate/migrate-child.ts source <port> <pages> <seed> [postcopy]
 *     fills a space (initialCounters), migrates it to <port> while a sequential writer makes
 *     writes numbered FIRST_WRITE, FIRST_WRITE+1, … (write s puts counter s on page pageOf(s));
 *     after each turn prints {"ack":s} (the last write acknowledged: stdout to a pipe is
 *     synchronous on Linux, so a printed ack reached the parent before any kill); prints
 *     {"done":true} or {"failed":code} at the end, then waits to be killed.
 */
import { setImmediate as yieldNow } from 'node:timers/promises';
import { AddressSpace, ErrorCodes, FramePool, MemfabricError } from '../../src/index.js';
import { MigrationListener, migrateSpace } from '../../src/migrate/index.js';
import { FIRST_WRITE, fillPage, initialCounters, pageOf } from './pattern.js';

const PAGE = 4096;
const say = (line: unknown): void => void process.stdout.write(`${JSON.stringify(line)}\n`);
const codeOf = (error: unknown): string => (error instanceof MemfabricError ? error.code : String(error));

const [role, ...args] = process.argv.slice(2);
if (role === 'dest') {
  const listener = await MigrationListener.listen({ host: '127.0.0.1', port: 0 });
  say({ port: listener.port });
  const incoming = await listener.accept();
  try {
    const space = await incoming.space();
    say({ received: true, epoch: space.epoch });
  } catch (error) {
    say({ failed: codeOf(error) });
  }
} else if (role === 'source') {
  const [port, pages, seed] = args.slice(0, 3).map(Number) as [number, number, number];
  const mode = args[3] === 'postcopy' ? 'postcopy' : 'precopy';
  const pool = new FramePool({ pageSize: PAGE, capacity: pages * PAGE + 64 * PAGE });
  const space = new AddressSpace(pool, { size: pages * PAGE });
  const buf = new Uint8Array(PAGE);
  const counters = initialCounters(pages);
  for (let p = 0; p < pages; p++)
    if (counters[p] !== 0) space.write(p * PAGE, fillPage(buf, p, counters[p]!));
  const migration = migrateSpace(space, { host: '127.0.0.1', port, mode });
  let s = FIRST_WRITE;
  let finished = false;
  const writing = (async () => {
    while (!finished) {
      try {
        await migration.writable();
        for (let k = 0; k < 8; k++) {
          const p = pageOf(seed, s, pages);
          space.write(p * PAGE, fillPage(buf, p, s));
          s++;
        }
      } catch (error) {
        if (!(error instanceof MemfabricError && error.code === ErrorCodes.MIGRATING)) throw error;
        if (space.writeGate === undefined || migration.progress().phase === 'done') return;
      }
      say({ ack: s - 1 });
      await yieldNow();
    }
  })();
  try {
    await migration.done;
    say({ done: true });
  } catch (error) {
    say({ failed: codeOf(error) });
  }
  finished = true;
  await writing.catch(() => undefined);
}
// Stay alive until killed (the parent kills by PID).
setInterval(() => undefined, 1 << 30);
