/**
 * SIGKILL of the destination during post-copy, at a different point of the push each run (the
 * destination in a child process, the source here, TCP on 127.0.0.1): the source's migration
 * fails with the destination's loss named, its gate stays closed (the space had moved), and it
 * still reads as it was at the switchover.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { ErrorCodes } from '../../src/errors.js';
import { MessageConnection } from '../../src/migrate/connection.js';
import { runPostCopySource } from '../../src/migrate/postcopy-source.js';
import { buildSource, expectedImage, type SourceShape } from './postcopy-fixture.js';
import { typedError } from '../typed-error.js';

const CHILD = fileURLToPath(new URL('./postcopy-destination-child.ts', import.meta.url));
const RUNS = Number(process.env.POSTCOPY_RUNS ?? 5);

for (let run = 0; run < RUNS; run++) {
  test(`SIGKILL of the destination mid-post-copy (run ${run}): the source fails named, stays gated and readable`, async () => {
    const shape: SourceShape = { seed: 500 + run, pages: 512, pageSize: 4096 };
    const space = buildSource(shape);
    const image = expectedImage(shape);
    const child = spawn(process.execPath, ['--import', 'tsx', CHILD], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const messages: { type: string; moved?: number }[] = [];
    let wake: (() => void) | undefined;
    child.on('message', (message: { type: string; moved?: number }) => {
      messages.push(message);
      wake?.();
    });
    const exited = once(child, 'exit');
    const next = async (
      type: string,
      test: (m: { moved?: number }) => boolean = () => true,
    ): Promise<void> => {
      for (;;) {
        const at = messages.findIndex((m) => m.type === type && test(m));
        if (at >= 0) {
          messages.splice(at, 1);
          return;
        }
        await new Promise<void>((resolve) => (wake = resolve));
      }
    };
    try {
      await next('ready');
      const server = createServer();
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
      const accepted = once(server, 'connection').then(([socket]) => socket as Socket);
      const migrationId = `kill-destination-${run}`;
      child.send({
        cmd: 'receive',
        port: (server.address() as { port: number }).port,
        hello: { migrationId, size: space.size, pageSize: 4096, epoch: space.epoch },
      });
      const connection = new MessageConnection(await accepted);
      server.close();
      // The push goes one 8-page batch at a time; the destination dies after run · 4 + 1 of them.
      let batches = 0;
      let release: (() => void) | undefined;
      const running = runPostCopySource(space, connection, {
        migrationId,
        pushBatchPages: 8,
        pace: async () => {
          batches++;
          if (batches > run * 4 + 1) await new Promise<void>((resolve) => (release = resolve));
        },
      });
      running.catch(() => undefined);
      await next('resumed');
      // Wait until the destination has moved at least the pushed batches, then kill it.
      await next('progress', (m) => (m.moved ?? 0) >= (run * 4 + 1) * 8);
      child.kill('SIGKILL');
      await exited;
      release?.();
      await assert.rejects(
        running,
        typedError(ErrorCodes.CONNECTION_CLOSED, 'the space now lives at the destination'),
      );
      assert.throws(() => space.writeU32(0, 1), typedError(ErrorCodes.MIGRATING, 'has moved'));
      const got = Buffer.alloc(image.length);
      space.read(0, got);
      assert.ok(got.equals(image), 'the source still reads as at the switchover');
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      space.destroy();
    }
  });
}
