/**
 * The appliance as a real process, for interop tests and the appliance benchmark.
 *
 *   const app = await ApplianceProcess.start({ memory: '64MiB' });
 *   t.after(() => app.stop());
 *   await app.region('create', 'x', '--size', '16MiB');      // the real `memfabric region` CLI
 *   await runOk('qemu-io', ['-f', 'raw', app.uri('x'), '-c', 'write -P 0xab 0 1M']);
 *
 * `start` spawns `memfabric appliance --nbd 127.0.0.1:0 --http 127.0.0.1:0 ...`,
 * reads its JSON log lines (pino, stdout) and resolves once the "appliance listening" line
 * names both ports. Every wait has a deadline; a child that exits early fails the start with
 * its stderr. `stop` sends SIGTERM to the child's PID and SIGKILL if it has not exited by the
 * deadline; `kill` sends SIGKILL at once. Children still alive when the test process exits are
 * SIGKILLed by PID, so a failed test cannot leave an appliance behind.
 *
 * Client binaries run through `run`/`runOk`: asynchronously (the event loop keeps serving the
 * tests' own sockets), each with a timeout.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { memfabricCommand } from '../support/cli.js';

export { missing, which } from '../nbd/helpers.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/**
 * Time an appliance may take from spawn to "appliance listening": it loads its modules in about
 * 1.2 s of CPU, but six started at once on a machine at load 15-25 (2 cores) took over 30 s.
 * A guard against a hang, not a measure.
 */
export const START_MS_MAX = 60_000;
/** Time an appliance may take to exit after SIGTERM before it gets SIGKILL. */
export const STOP_MS_MAX = 10_000;
/** Default timeout for one client command. */
export const CLIENT_MS_MAX = 30_000;
/** Log lines kept per appliance (older ones are dropped). */
const LOG_LINES_MAX = 10_000;
/** Bytes of stderr kept per appliance. */
const STDERR_BYTES_MAX = 64 * KiB;

// ---- client binaries -------------------------------------------------------------------------

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
  /** stdout then stderr, for matching client messages wherever they were printed. */
  output: string;
}

export function run(
  cmd: string,
  args: string[],
  options: { timeoutMs?: number; cwd?: string } = {},
): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      cmd,
      args,
      {
        timeout: options.timeoutMs ?? CLIENT_MS_MAX,
        killSignal: 'SIGKILL',
        maxBuffer: 64 * MiB,
        ...(options.cwd ? { cwd: options.cwd } : {}),
      },
      (err, stdout, stderr) => {
        const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1;
        resolve({ code, stdout, stderr, output: stdout + stderr });
      },
    );
  });
}

export async function runOk(
  cmd: string,
  args: string[],
  options: { timeoutMs?: number; cwd?: string } = {},
): Promise<Run> {
  const r = await run(cmd, args, options);
  assert.equal(r.code, 0, `${cmd} ${args.join(' ')} exited ${r.code}:\n${r.output}`);
  return r;
}

/**
 * Runs qemu-io with `-c` commands. qemu-io exits 0 even when a pattern check fails, so callers
 * look at `output` (see assertQemuIoClean).
 */
export function qemuIo(uri: string, commands: string[], extra: string[] = []): Promise<Run> {
  const args = ['-f', 'raw', ...extra, uri];
  for (const c of commands) args.push('-c', c);
  return run('qemu-io', args);
}

/** Fails when qemu-io reported a failed pattern check or a failed command. */
export function assertQemuIoClean(r: Run, expectedOps?: number): void {
  assert.doesNotMatch(r.output, /Pattern verification failed|failed|error|can't open/i, r.output);
  if (expectedOps !== undefined) {
    assert.equal(
      (r.output.match(/^(wrote|read|discard) \d+\/\d+ bytes/gm) ?? []).length,
      expectedOps,
      `expected ${expectedOps} successful operations:\n${r.output}`,
    );
  }
}

/** A temporary directory removed after the test. */
export function tempDir(t: { after: (fn: () => void) => void }, prefix = 'memfabric-interop-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// ---- the appliance process -------------------------------------------------------------------

export interface StartOptions {
  /** --memory (default 256MiB). */
  memory?: string;
  /** --data-dir, for file-backed regions. */
  dataDir?: string;
  /** --default-size for the default region (default 16MiB, so it costs nothing by accident). */
  defaultSize?: string;
  /** false adds --no-merge. */
  merge?: boolean;
  /** Further CLI arguments. */
  args?: string[];
  /** Log level (default info: the listening line is at info). */
  logLevel?: string;
  /**
   * --token-file. Default: with a data dir none (the token is DATA_DIR/admin.token), else one
   * file shared by every appliance this test process starts (so one token reaches them all).
   */
  tokenFile?: string;
  /** Node options before the script, e.g. `--cpu-prof` to see where a benchmark's time goes. */
  nodeArgs?: string[];
}

let sharedTokenDir: string | undefined;

/** The token file shared by this process's appliances without a data dir (removed at exit). */
function sharedTokenFile(): string {
  sharedTokenDir ??= mkdtempSync(join(tmpdir(), 'memfabric-token-'));
  return join(sharedTokenDir, 'admin.token');
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

type LogLine = Record<string, unknown> & { msg?: string };

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    if (sharedTokenDir) rmSync(sharedTokenDir, { recursive: true, force: true });
    for (const child of live) {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
  });
}

export class ApplianceProcess {
  readonly pid: number;
  readonly nbdHost: string;
  readonly nbdPort: number;
  /** The admin API, e.g. http://127.0.0.1:PORT */
  readonly httpUrl: string;
  /** The admin token (read from the token file the appliance reported). */
  readonly token: string;
  /** The file holding it. */
  readonly tokenFile: string;
  readonly logs: LogLine[];
  readonly exited: Promise<Exit>;
  private readonly child: ChildProcess;
  private stderrText: { value: string };
  private exit: Exit | undefined;

  private constructor(
    child: ChildProcess,
    listening: LogLine,
    logs: LogLine[],
    stderr: { value: string },
    exited: Promise<Exit>,
  ) {
    this.child = child;
    this.pid = child.pid!;
    const nbd = String(listening.nbd);
    const colon = nbd.lastIndexOf(':');
    this.nbdHost = nbd.slice(0, colon);
    this.nbdPort = Number(nbd.slice(colon + 1));
    this.httpUrl = String(listening.http);
    this.tokenFile = String(listening.tokenFile);
    this.token = readFileSync(this.tokenFile, 'utf8').trim();
    this.logs = logs;
    this.stderrText = stderr;
    this.exited = exited.then((exit) => (this.exit = exit));
  }

  static async start(options: StartOptions = {}): Promise<ApplianceProcess> {
    installExitHook();
    const args = [
      ...(options.nodeArgs ?? []),
      ...memfabricCommand(),
      'appliance',
      '--nbd',
      '127.0.0.1:0',
      '--http',
      '127.0.0.1:0',
      '--memory',
      options.memory ?? '256MiB',
      '--default-size',
      options.defaultSize ?? '16MiB',
      '--log-level',
      options.logLevel ?? 'info',
      ...(options.dataDir ? ['--data-dir', options.dataDir] : []),
      ...(options.tokenFile || !options.dataDir
        ? ['--token-file', options.tokenFile ?? sharedTokenFile()]
        : []),
      ...(options.merge === false ? ['--no-merge'] : []),
      ...(options.args ?? []),
    ];
    const child = spawn(process.execPath, args, {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    if (child.pid === undefined) {
      // spawn failures surface as an 'error' event right away
      const error = await new Promise<Error>((resolve) => child.once('error', resolve));
      throw error;
    }
    live.add(child);
    const exited = new Promise<Exit>((resolve) => {
      // 'close', not 'exit': it comes after stdout and stderr have been read to their end.
      child.once('close', (code, signal) => {
        live.delete(child);
        resolve({ code, signal });
      });
    });
    const logs: LogLine[] = [];
    const stderr = { value: '' };
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (text: string) => {
      if (stderr.value.length < STDERR_BYTES_MAX) stderr.value += text;
    });
    let onListening: ((line: LogLine) => void) | undefined;
    let pending = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (text: string) => {
      pending += text;
      let newline: number;
      while ((newline = pending.indexOf('\n')) >= 0) {
        const raw = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        let line: LogLine;
        try {
          line = JSON.parse(raw) as LogLine;
        } catch {
          line = { msg: raw, unparsed: true };
        }
        if (logs.length >= LOG_LINES_MAX) logs.shift();
        logs.push(line);
        if (line.msg === 'appliance listening') onListening?.(line);
      }
    });

    const listening = await new Promise<LogLine>((resolve, reject) => {
      const timer = setTimeout(() => {
        fail(new Error(`appliance did not report "appliance listening" within ${START_MS_MAX} ms`));
      }, START_MS_MAX);
      const fail = (error: Error): void => {
        clearTimeout(timer);
        if (child.exitCode === null && child.signalCode === null) process.kill(child.pid!, 'SIGKILL');
        reject(new Error(`${error.message}\nstderr:\n${stderr.value}`));
      };
      onListening = (line) => {
        clearTimeout(timer);
        resolve(line);
      };
      void exited.then((exit) =>
        fail(new Error(`appliance exited (${exit.code ?? exit.signal}) before listening`)),
      );
    });
    onListening = undefined;
    return new ApplianceProcess(child, listening, logs, stderr, exited);
  }

  /** nbd://127.0.0.1:PORT/NAME (the empty name: the default region). */
  uri(region = ''): string {
    return `nbd://${this.nbdHost}:${this.nbdPort}/${region}`;
  }

  /** True while the process has not exited. */
  get alive(): boolean {
    return this.exit === undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  get stderr(): string {
    return this.stderrText.value;
  }

  /** SIGTERM by PID; SIGKILL if still running after `deadlineMs`. Resolves with how it exited. */
  async stop(deadlineMs = STOP_MS_MAX): Promise<Exit> {
    if (!this.alive) return this.exited;
    this.signal('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => {
      timer = setTimeout(() => resolve('late'), deadlineMs);
    });
    const outcome = await Promise.race([this.exited, late]);
    clearTimeout(timer);
    if (outcome === 'late') {
      this.signal('SIGKILL');
      return this.exited;
    }
    return outcome;
  }

  /** SIGKILL by PID (a crash: nothing is saved on the way out). */
  async kill(): Promise<Exit> {
    if (!this.alive) return this.exited;
    this.signal('SIGKILL');
    return this.exited;
  }

  /** Runs `memfabric region ARGS... --appliance URL` (the real CLI) and returns its output. */
  async region(...args: string[]): Promise<Run> {
    const r = await run(process.execPath, [
      ...memfabricCommand(),
      'region',
      ...args,
      '--appliance',
      this.httpUrl,
      '--token-file',
      this.tokenFile,
    ]);
    assert.equal(r.code, 0, `memfabric region ${args.join(' ')} exited ${r.code}:\n${r.output}`);
    return r;
  }

  /** One admin API call; resolves with the status and the parsed JSON body (if any). */
  async api<T = unknown>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
    const response = await fetch(new URL(path, this.httpUrl), {
      method,
      headers: {
        authorization: `Bearer ${this.token}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: AbortSignal.timeout(CLIENT_MS_MAX),
    });
    const text = await response.text();
    return { status: response.status, body: (text === '' ? undefined : JSON.parse(text)) as T };
  }

  /**
   * Waits until the regions found in the data directory have all loaded or failed (they load
   * in the background after "appliance listening"): no region is in state `loading`.
   */
  async waitLoaded(timeoutMs = START_MS_MAX): Promise<Array<{ name: string; state: string }>> {
    let regions: Array<{ name: string; state: string }> = [];
    await waitFor(
      'regions to finish loading',
      async () => {
        regions = (await this.api<{ regions: Array<{ name: string; state: string }> }>('GET', '/v1/regions'))
          .body.regions;
        return regions.every((region) => region.state !== 'loading');
      },
      timeoutMs,
    );
    return regions;
  }

  /** Creates a region through the admin API (faster than the CLI where the CLI is not the point). */
  async createRegion(
    name: string,
    size: number | string,
    extra: { readOnly?: boolean; tenant?: string; file?: boolean } = {},
  ): Promise<void> {
    const r = await this.api('POST', '/v1/regions', { name, size, ...extra });
    assert.equal(r.status, 201, `create ${name}: ${JSON.stringify(r.body)}`);
  }

  private signal(signal: NodeJS.Signals): void {
    try {
      process.kill(this.pid, signal);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
    }
  }
}

/** Polls `condition` every `intervalMs` until it holds; fails with `what` after `timeoutMs`. */
export async function waitFor(
  what: string,
  condition: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
  intervalMs = 20,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
