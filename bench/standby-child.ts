/**
 * The other processes of the standby benchmark (standby.bench.ts):
 *
 *   node --import tsx bench/standby-child.ts '{"role":"standby"}'
 *     A StandbyListener and a TCP echo server on 127.0.0.1; prints {"port","echoPort"}. For each
 *     replica it accepts: {"activated":1,"failoverMs","epoch"} when it takes over; a standby
 *     whose primary detached is released. {"echoClosed":1} when an echo client's connection
 *     drops. The bench times these lines as they arrive (no clocks compared across processes).
 *     Exits when stdin closes.
 *
 *   node --import tsx bench/standby-child.ts '{"role":"primary","port":…,"echoPort":…,"pages":…}'
 *     Connects to the echo server (so the standby process sees this process die through a plain
 *     socket too), replicates a space of `pages` pages, prints {"ready":true} and then writes a
 *     page and calls durable() for ever, printing {"durable":n} every 100 steps.
 */
import { connect, createServer } from 'node:net';
import { AddressSpace, FramePool } from '../src/index.js';
import { replicate } from '../src/migrate/replica.js';
import { StandbyListener, type Activation, type Standby } from '../src/migrate/standby.js';

const job = JSON.parse(process.argv[2]!) as {
  role: string;
  port?: number;
  echoPort?: number;
  pages?: number;
};
const say = (line: unknown): void => void process.stdout.write(`${JSON.stringify(line)}\n`);

if (job.role === 'standby') {
  const echo = createServer((socket) => {
    socket.on('data', (chunk) => socket.write(chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => say({ echoClosed: 1 }));
  });
  echo.listen(0, '127.0.0.1');
  await new Promise((resolve) => echo.once('listening', resolve));
  const listener = await StandbyListener.listen({ port: 0 });
  say({ port: listener.port, echoPort: (echo.address() as { port: number }).port });
  listener.on('standby', (standby: Standby) => {
    standby.on('activated', (activation: Activation) => {
      say({ activated: 1, failoverMs: activation.failoverMs, epoch: activation.epoch });
      activation.space.destroy();
    });
    standby.on('detached', () => void standby.close());
  });
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
} else {
  const pageSize = 4096;
  const pages = job.pages ?? 8192;
  const echo = connect({ host: '127.0.0.1', port: job.echoPort! });
  echo.on('error', () => undefined);
  const space = new AddressSpace(new FramePool({ capacity: pages * pageSize, pageSize }), {
    size: pages * pageSize,
  });
  space.write(0, Buffer.alloc(pages * pageSize, 1));
  const replica = await replicate(space, { host: '127.0.0.1', port: job.port! });
  say({ ready: true });
  const page = Buffer.alloc(pageSize);
  for (let n = 1; ; n++) {
    page.writeUInt32LE(n, 0);
    space.write((n % pages) * pageSize, page);
    await replica.durable();
    if (n % 100 === 0) say({ durable: n });
  }
}
