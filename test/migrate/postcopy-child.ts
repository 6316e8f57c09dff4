/**
 * A post-copy source in its own process (the tests SIGKILL it, and a source must not share the
 * destination's thread: a fault blocks it). Driven over IPC:
 *   { cmd: 'migrate', port, shape, migrationId, pushBatchPages?, paced? }
 *       builds the source space, connects to 127.0.0.1:port, sends { type: 'hello', hello },
 *       runs the migration, then { type: 'done', report } or { type: 'failed', code, message }.
 *       Right after the switchover it tries a write and sends { type: 'gated', code }.
 *   { cmd: 'push', batches }   with paced: lets that many more push batches go.
 * Every message it sends on its page server's attach is { type: 'offer', port } (for the tests
 * that knock on the page server themselves).
 */
import { MessageConnection } from '../../src/migrate/connection.js';
import { runPostCopySource } from '../../src/migrate/postcopy-source.js';
import { MemfabricError } from '../../src/errors.js';
import { buildSource, type SourceShape } from './postcopy-fixture.js';

interface Migrate {
  cmd: 'migrate';
  port: number;
  shape: SourceShape;
  migrationId: string;
  pushBatchPages?: number;
  paced?: boolean;
}

let tokens = 0;
let tokenWaiter: (() => void) | undefined;

function send(message: unknown): void {
  process.send!(message);
}

async function pace(_pages: number, progress: { pushBatches: number }): Promise<void> {
  send({ type: 'paced', pushBatches: progress.pushBatches });
  while (tokens === 0) await new Promise<void>((resolve) => (tokenWaiter = resolve));
  tokens--;
}

async function migrate(command: Migrate): Promise<void> {
  tokens = 0;
  const space = buildSource(command.shape);
  const connection = await MessageConnection.connect({ host: '127.0.0.1', port: command.port });
  send({
    type: 'hello',
    hello: {
      migrationId: command.migrationId,
      size: space.size,
      pageSize: space.pageSize,
      epoch: space.epoch,
    },
  });
  try {
    const report = await runPostCopySource(space, connection, {
      migrationId: command.migrationId,
      ...(command.pushBatchPages ? { pushBatchPages: command.pushBatchPages } : {}),
      ...(command.paced ? { pace } : {}),
      onSwitchover: () => {
        try {
          space.writeU8(0, 1);
          send({ type: 'gated', code: 'none' });
        } catch (error) {
          send({ type: 'gated', code: (error as MemfabricError).code, message: (error as Error).message });
        }
      },
    });
    send({ type: 'done', report });
  } catch (error) {
    send({
      type: 'failed',
      code: error instanceof MemfabricError ? error.code : 'none',
      message: (error as Error).message,
    });
  }
}

process.on('message', (message: { cmd: string; batches?: number }) => {
  if (message.cmd === 'migrate') void migrate(message as Migrate);
  else if (message.cmd === 'push') {
    tokens += message.batches ?? 1;
    tokenWaiter?.();
  } else if (message.cmd === 'exit') process.exit(0);
});
send({ type: 'ready' });
