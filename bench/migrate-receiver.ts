/**
 * The destination of bench/migrate.bench.ts, in its own process (as in real use): receives
 * migrations one after another into one frame pool, each into a new space that it then
 * destroys, printing {"port"} once and {"received":pages} after each.
 */
import { FramePool } from '../src/memory/index.js';
import { MigrationListener } from '../src/migrate/index.js';

const listener = await MigrationListener.listen({ host: '127.0.0.1', port: 0 });
const pool = new FramePool({ pageSize: 4096, capacity: '64MiB', maxCapacity: '4GiB' });
process.stdout.write(`${JSON.stringify({ port: listener.port })}\n`);
for (;;) {
  const incoming = await listener.accept();
  try {
    const space = await incoming.space({ pool });
    const pages = space.stats().dataPages;
    space.destroy();
    process.stdout.write(`${JSON.stringify({ received: pages })}\n`);
  } catch (error) {
    process.stdout.write(`${JSON.stringify({ failed: String(error) })}\n`);
  }
}
