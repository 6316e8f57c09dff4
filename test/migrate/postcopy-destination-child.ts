/**
 * A post-copy destination in its own process (the tests SIGKILL it). Driven over IPC:
 *   { cmd: 'receive', port, hello }   connects to 127.0.0.1:port, takes the space over, then
 *                                     writes and reads it (faulting) in a loop, sending
 *                                     { type: 'resumed' } and then { type: 'progress', moved }.
 */
import { MessageConnection } from '../../src/migrate/connection.js';
import { receivePostCopy, type PostCopyHello } from '../../src/migrate/postcopy-destination.js';

function send(message: unknown): void {
  process.send!(message);
}

async function receive(port: number, hello: PostCopyHello): Promise<void> {
  const connection = await MessageConnection.connect({ host: '127.0.0.1', port });
  const { space, progress } = await receivePostCopy(connection, hello, { local: { kind: 'memory' } });
  send({ type: 'resumed' });
  let round = 0;
  for (;;) {
    const page = (round * 7) % space.pages;
    space.writeU32(page * space.pageSize + 64, round);
    space.readU32(((round * 13) % space.pages) * space.pageSize);
    if (round % 16 === 0) {
      const p = progress();
      send({ type: 'progress', moved: p.byFault + p.byPush + p.notNeeded });
    }
    round++;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

process.on('message', (message: { cmd: string; port: number; hello: PostCopyHello }) => {
  if (message.cmd === 'receive') void receive(message.port, message.hello);
});
send({ type: 'ready' });
