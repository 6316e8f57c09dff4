/**
 * Test plumbing for post-copy: a source child process (postcopy-child.ts) and a destination in
 * this process, joined over real TCP on 127.0.0.1. The handshake the migration engine would do
 * is replaced by the child sending its hello over IPC.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { randomUUID } from 'node:crypto';
import { MessageConnection } from '../../src/migrate/connection.js';
import {
  receivePostCopy,
  type PostCopyDestination,
  type PostCopyDestinationOptions,
  type PostCopyHello,
} from '../../src/migrate/postcopy-destination.js';
import type { SourceShape } from './postcopy-fixture.js';

const CHILD = fileURLToPath(new URL('./postcopy-child.ts', import.meta.url));
/** No step of a test waits longer than this for the child (a bound, not a timing assumption). */
const WAIT_MS = 60_000;

export interface ChildMessage {
  type: string;
  [key: string]: unknown;
}

export class SourceChild {
  readonly process: ChildProcess;
  private readonly inbox: ChildMessage[] = [];
  private waiter: (() => void) | undefined;
  readonly exited: Promise<void>;

  private constructor(child: ChildProcess) {
    this.process = child;
    child.on('message', (message: ChildMessage) => {
      this.inbox.push(message);
      this.waiter?.();
    });
    this.exited = once(child, 'exit').then(() => {
      this.waiter?.();
    });
  }

  static async start(): Promise<SourceChild> {
    const child = spawn(process.execPath, ['--import', 'tsx', CHILD], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const source = new SourceChild(child);
    await source.next('ready');
    return source;
  }

  send(message: unknown): void {
    this.process.send(message as never);
  }

  /** A message of `type` already received, taken, or undefined. */
  take(type: string): ChildMessage | undefined {
    const at = this.inbox.findIndex((message) => message.type === type);
    return at >= 0 ? this.inbox.splice(at, 1)[0] : undefined;
  }

  /** Forgets every message received so far. */
  clear(): void {
    this.inbox.length = 0;
  }

  /** The next message of `type` (earlier ones of other types are kept). */
  async next(type: string): Promise<ChildMessage> {
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const at = this.inbox.findIndex((message) => message.type === type);
      if (at >= 0) return this.inbox.splice(at, 1)[0]!;
      if (this.process.exitCode !== null || this.process.signalCode !== null) {
        throw new Error(`the source child exited before sending '${type}'`);
      }
      if (Date.now() > deadline) throw new Error(`no '${type}' from the source child within ${WAIT_MS} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 1000);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (this.process.exitCode !== null || this.process.signalCode !== null) return;
    this.process.kill(signal);
    if (signal === 'SIGKILL' || signal === 'SIGTERM') await this.exited;
  }
}

export interface Migration {
  destination: PostCopyDestination;
  hello: PostCopyHello;
}

/**
 * Starts a post-copy migration of `shape` from `child` to a destination here; resolves at the
 * switchover with the running destination.
 */
export async function startMigration(
  child: SourceChild,
  shape: SourceShape,
  options: PostCopyDestinationOptions & { paced?: boolean; pushBatchPages?: number } = {},
): Promise<Migration> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  const accepted = once(server, 'connection').then(([socket]) => socket as Socket);
  const { paced, pushBatchPages, ...destinationOptions } = options;
  child.send({
    cmd: 'migrate',
    port,
    shape,
    migrationId: randomUUID(),
    ...(paced ? { paced } : {}),
    ...(pushBatchPages ? { pushBatchPages } : {}),
  });
  try {
    const socket = await accepted;
    const hello = (await child.next('hello')).hello as PostCopyHello;
    const connection = new MessageConnection(socket);
    const destination = await receivePostCopy(connection, hello, {
      local: { kind: 'memory' },
      ...destinationOptions,
    });
    return { destination, hello };
  } finally {
    server.close();
  }
}

/** Waits (on the event loop, bounded) until `condition` holds: for counters another thread updates. */
export async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`${what}: not reached within ${WAIT_MS} ms`);
    await new Promise<void>((resolve) => setTimeout(resolve, 2));
  }
}
