/** Starting servers and finding client binaries for the NBD tests. */
import { spawnSync } from 'node:child_process';
import { NbdServer, type NbdServerOptions } from '../../src/nbd/index.js';
import type { MemoryDirectory } from './memory-export.js';
import { testDirectory } from './memory-export.js';

export interface Running {
  server: NbdServer;
  port: number;
  dir: MemoryDirectory;
}

/** Starts a server on 127.0.0.1, port 0. The caller closes it (t.after(() => server.close())). */
export async function startServer(
  dir: MemoryDirectory = testDirectory(),
  options: Partial<NbdServerOptions> = {},
): Promise<Running> {
  const server = new NbdServer({ directory: dir, ...options });
  const { port } = await server.listen(0);
  return { server, port, dir };
}

/** The absolute path of `name` on PATH, or undefined. */
export function which(name: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
  const path = r.stdout.trim();
  return r.status === 0 && path !== '' ? path : undefined;
}

/** A reason to skip when a client binary is missing (CI installs them via scripts/setup.sh). */
export function missing(...names: string[]): string | false {
  const absent = names.filter((n) => which(n) === undefined);
  return absent.length === 0
    ? false
    : `${absent.join(', ')} not installed (apt-get install libnbd-bin qemu-utils fio)`;
}

/**
 * Stops a process with SIGSTOP and waits until the kernel reports it stopped (state T in
 * /proc/PID/stat): kill() returns before delivery, and a server may still answer a request or
 * two in between.
 */
export async function stopProcess(pid: number, deadlineMs = 5000): Promise<void> {
  const { readFile } = await import('node:fs/promises');
  process.kill(pid, 'SIGSTOP');
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // Field 3, after the command name in parentheses (which may contain spaces).
    if (stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'T') return;
    if (Date.now() > deadline) throw new Error(`process ${pid} did not stop within ${deadlineMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}
