/**
 * Real NBD servers nobody here wrote, for the client tests: `nbdkit memory` and `qemu-nbd` over
 * a temporary raw file. Each binds 127.0.0.1 on a free port, is waited for by connecting until
 * a deadline (failing at once if the process exits), and is stopped by its PID.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** How long a server may take to start listening. */
const START_MS_MAX = 10_000;
const STOP_MS_MAX = 5_000;
const POLL_MS = 20;

export interface Spawned {
  readonly pid: number;
  readonly port: number;
  readonly child: ChildProcess;
  /** What the server printed (for failure messages). */
  output(): string;
  /** Sends SIGKILL (after SIGCONT, in case it was stopped) and waits for the exit. */
  stop(): Promise<void>;
}

/** A port that was free a moment ago (the kernel's pick for port 0). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

export async function spawnServer(command: string, args: string[], port: number): Promise<Spawned> {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout?.on('data', (chunk: Buffer) => (out += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (out += chunk.toString()));
  const exit = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const spawned: Spawned = {
    pid: child.pid ?? -1,
    port,
    child,
    output: () => out,
    stop: async () => {
      if (exited(child)) return;
      try {
        process.kill(child.pid as number, 'SIGCONT');
        process.kill(child.pid as number, 'SIGKILL');
      } catch {
        // already gone
      }
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([exit, new Promise<void>((r) => (timer = setTimeout(r, STOP_MS_MAX)))]);
      clearTimeout(timer);
    },
  };
  const deadline = Date.now() + START_MS_MAX;
  while (!(await canConnect(port))) {
    if (exited(child)) throw new Error(`${command} exited before listening:\n${out}`);
    if (Date.now() > deadline) {
      await spawned.stop();
      throw new Error(`${command} did not listen on ${port} within ${START_MS_MAX} ms:\n${out}`);
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  return spawned;
}

/** `nbdkit memory SIZE` on 127.0.0.1:port (a free port unless given). */
export async function spawnNbdkitMemory(size = '64M', port?: number): Promise<Spawned> {
  const p = port ?? (await freePort());
  return spawnServer(
    'nbdkit',
    ['--foreground', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(p), 'memory', size],
    p,
  );
}

export interface QemuNbd extends Spawned {
  readonly file: string;
  readonly exportName: string;
}

/**
 * `qemu-nbd` serving a sparse temporary raw file of `size` bytes as `exportName`, persistent
 * (it survives client disconnects), with discard enabled so trims punch holes, and admitting
 * `shared` clients at once (qemu advertises multi-conn when that is more than one).
 */
export async function spawnQemuNbd(size: number, exportName = 'disk', shared = 4): Promise<QemuNbd> {
  const dir = mkdtempSync(join(tmpdir(), 'memfabric-qemu-nbd-'));
  const file = join(dir, 'disk.raw');
  const { truncateSync, writeFileSync } = await import('node:fs');
  writeFileSync(file, '');
  truncateSync(file, size);
  const port = await freePort();
  const spawned = await spawnServer(
    'qemu-nbd',
    [
      '-f',
      'raw',
      '-b',
      '127.0.0.1',
      '-p',
      String(port),
      '-x',
      exportName,
      '-t',
      '-e',
      String(shared),
      '--discard=unmap',
      // Flushes reach qemu but not the disk: fsync on the test machine's disk is not under test.
      '--cache=unsafe',
      file,
    ],
    port,
  );
  return {
    ...spawned,
    file,
    exportName,
    stop: async () => {
      await spawned.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
