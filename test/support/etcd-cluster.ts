/**
 * A real etcd cluster (1 or 3 members) on loopback, for the fleet-mode tests.
 *
 *   const cluster = await EtcdCluster.start(t, { members: 3 });   // skips the test without etcd
 *   new Etcd3({ hosts: cluster.endpoints });
 *   const leader = await cluster.leader();  await cluster.kill(leader);  await cluster.restart(leader);
 *
 * Each member is `/usr/bin/etcd` with free loopback ports (client and peer), its own temporary
 * data directory, and small heartbeat/election timeouts so a leader's death is noticed within
 * about a second. Never the default ports 2379/2380. Members are stopped by PID: `stop()` at
 * the end of the test (registered with t.after), and a process-exit hook SIGKILLs any member
 * still alive if the test process ends otherwise. `start` resolves once the cluster elected a
 * leader and answered a linearizable read, with a deadline.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Etcd3 } from 'etcd3';

export const ETCD_BIN = '/usr/bin/etcd';
/** From spawn to a cluster with a leader that answers reads (loaded CI machines are slow). */
export const ETCD_START_MS_MAX = 45_000;
/** Time a member may take to exit after SIGTERM before it gets SIGKILL. */
const ETCD_STOP_MS_MAX = 10_000;
/** Raft heartbeat and election timeout (ms): small for fast failover, wide enough for a busy CPU. */
const HEARTBEAT_MS = 100;
const ELECTION_MS = 1000;
/** Bytes of a member's stderr kept for failure messages. */
const STDERR_BYTES_MAX = 32 * 1024;
/** Starts tried when a member exits during start (a port taken between probe and bind). */
const START_ATTEMPTS = 3;

/** Why the etcd tests cannot run here, or undefined when they can. */
export function etcdMissing(): string | undefined {
  return existsSync(ETCD_BIN)
    ? undefined
    : `${ETCD_BIN} is missing: install Debian's etcd-server (scripts/setup.sh does)`;
}

interface Member {
  name: string;
  clientPort: number;
  peerPort: number;
  dataDir: string;
  child: ChildProcess | undefined;
  exited: Promise<void>;
  /** Exited without being asked to (killed or stopped by us is not early). */
  exitedEarly: boolean;
  stopping?: boolean;
  stderr: string;
}

const live = new Set<ChildProcess>();
/** Data directories of clusters not stopped yet (removed at exit too). */
const roots = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const child of live) {
      try {
        process.kill(child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    for (const root of roots) rmSync(root, { recursive: true, force: true });
  });
}

/** A free TCP port on 127.0.0.1 (the OS picks it; it is free again once we close). */
async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Polls `condition` until it holds; fails naming `what` after `timeoutMs`. */
export async function until(
  what: string,
  condition: () => boolean | Promise<boolean>,
  timeoutMs: number,
  intervalMs = 50,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let last: unknown;
    try {
      if (await condition()) return;
    } catch (error) {
      if (error instanceof StartFailed) throw error;
      last = error;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${String(last)})` : ''}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

export interface EtcdClusterOptions {
  /** 1 or 3 (default 3). */
  members?: 1 | 3;
}

export class EtcdCluster {
  private readonly members: Member[];
  private readonly token: string;
  private readonly root: string;
  private stopped = false;

  private constructor(members: Member[], token: string, root: string) {
    this.members = members;
    this.token = token;
    this.root = root;
  }

  /**
   * Starts the cluster and registers its stop with `t.after`; skips `t` (returning undefined)
   * when etcd is not installed.
   */
  static async start(
    t: { after: (fn: () => Promise<void>) => void; skip: (message: string) => void },
    options: EtcdClusterOptions = {},
  ): Promise<EtcdCluster | undefined> {
    const why = etcdMissing();
    if (why) {
      t.skip(why);
      return undefined;
    }
    installExitHook();
    const count = options.members ?? 3;
    // A port found free may be taken by another process before etcd binds it: then the member
    // exits at once, and the cluster is started again on fresh ports.
    for (let attempt = 1; ; attempt++) {
      const cluster = await EtcdCluster.spawnAll(count);
      t.after(() => cluster.stop());
      try {
        await cluster.waitHealthy();
        return cluster;
      } catch (error) {
        await cluster.stop();
        if (attempt >= START_ATTEMPTS || !cluster.members.some((m) => m.exitedEarly)) throw error;
      }
    }
  }

  private static async spawnAll(count: number): Promise<EtcdCluster> {
    const root = mkdtempSync(join(tmpdir(), 'memfabric-etcd-'));
    roots.add(root);
    const members: Member[] = [];
    for (let i = 0; i < count; i++) {
      members.push({
        name: `m${i}`,
        clientPort: await freePort(),
        peerPort: await freePort(),
        dataDir: join(root, `m${i}`),
        child: undefined,
        exited: Promise.resolve(),
        exitedEarly: false,
        stderr: '',
      });
    }
    const cluster = new EtcdCluster(members, `memfabric-test-${process.pid}-${Date.now()}`, root);
    for (const member of members) cluster.spawn(member);
    return cluster;
  }

  /** Client URLs of every member, e.g. http://127.0.0.1:PORT. */
  get endpoints(): string[] {
    return this.members.map((m) => this.endpoint(m.name));
  }

  get memberNames(): string[] {
    return this.members.map((m) => m.name);
  }

  endpoint(member: string): string {
    return `http://127.0.0.1:${this.member(member).clientPort}`;
  }

  /** PID of a running member. */
  pid(member: string): number | undefined {
    return this.member(member).child?.pid;
  }

  /** The member that leads, by asking live members for their status (maintenance API). */
  async leader(timeoutMs = ETCD_START_MS_MAX): Promise<string> {
    let found: string | undefined;
    await until(
      'an etcd leader',
      async () => {
        for (const member of this.members) {
          if (!member.child) continue;
          const status = await this.status(member.name).catch(() => undefined);
          if (!status || status.leader === '0') continue;
          if (status.header.member_id === status.leader) {
            found = member.name;
            return true;
          }
        }
        return false;
      },
      timeoutMs,
    );
    return found!;
  }

  /** SIGKILL by PID; resolves once the member has exited. */
  async kill(member: string): Promise<void> {
    const m = this.member(member);
    if (!m.child) return;
    m.stopping = true;
    signal(m.child, 'SIGKILL');
    await m.exited;
  }

  /** Starts a member again on its ports and data directory; waits until the cluster is healthy. */
  async restart(member: string): Promise<void> {
    const m = this.member(member);
    if (m.child) throw new Error(`etcd member ${member} is running`);
    this.spawn(m);
    await this.waitHealthy();
  }

  /** Stops every member (SIGTERM by PID, SIGKILL past a deadline) and removes the data dirs. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await Promise.all(
      this.members.map(async (m) => {
        if (!m.child) return;
        m.stopping = true;
        signal(m.child, 'SIGTERM');
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<'late'>((resolve) => {
          timer = setTimeout(() => resolve('late'), ETCD_STOP_MS_MAX);
        });
        const outcome = await Promise.race([m.exited.then(() => 'done' as const), late]);
        clearTimeout(timer);
        if (outcome === 'late' && m.child) {
          signal(m.child, 'SIGKILL');
          await m.exited;
        }
      }),
    );
    rmSync(this.root, { recursive: true, force: true });
    roots.delete(this.root);
  }

  /** Waits until every running member sees a leader and the cluster answers a linearizable read. */
  async waitHealthy(timeoutMs = ETCD_START_MS_MAX): Promise<void> {
    const client = this.client();
    try {
      await until(
        'the etcd cluster to elect a leader and answer reads',
        async () => {
          const early = this.members.find((m) => m.exitedEarly);
          if (early) throw new StartFailed(`etcd member ${early.name} exited during start`);
          for (const member of this.members) {
            if (!member.child) continue;
            const status = await this.status(member.name);
            if (status.leader === '0') return false;
          }
          await client.get('/memfabric-test/health').options({ deadline: Date.now() + 2000 });
          return true;
        },
        timeoutMs,
        100,
      ).catch((error: Error) => {
        const logs = this.members.map((m) => `--- ${m.name}:\n${m.stderr.slice(-2000)}`).join('\n');
        throw new Error(`${error.message}\n${logs}`);
      });
    } finally {
      client.close();
    }
  }

  /** A client for the whole cluster (the caller closes it). */
  client(): Etcd3 {
    return new Etcd3({ hosts: this.endpoints, dialTimeout: 2000 });
  }

  private async status(member: string): Promise<{ leader: string; header: { member_id: string } }> {
    const client = new Etcd3({ hosts: this.endpoint(member), dialTimeout: 1000 });
    try {
      return await client.maintenance.status({ deadline: Date.now() + 1000 });
    } finally {
      client.close();
    }
  }

  private member(name: string): Member {
    const m = this.members.find((member) => member.name === name);
    if (!m) throw new Error(`no etcd member ${name} (members: ${this.memberNames.join(', ')})`);
    return m;
  }

  private spawn(m: Member): void {
    const initialCluster = this.members.map((x) => `${x.name}=http://127.0.0.1:${x.peerPort}`).join(',');
    const child = spawn(
      ETCD_BIN,
      [
        '--name',
        m.name,
        '--data-dir',
        m.dataDir,
        '--listen-client-urls',
        `http://127.0.0.1:${m.clientPort}`,
        '--advertise-client-urls',
        `http://127.0.0.1:${m.clientPort}`,
        '--listen-peer-urls',
        `http://127.0.0.1:${m.peerPort}`,
        '--initial-advertise-peer-urls',
        `http://127.0.0.1:${m.peerPort}`,
        '--initial-cluster',
        initialCluster,
        '--initial-cluster-token',
        this.token,
        '--initial-cluster-state',
        'new',
        '--heartbeat-interval',
        String(HEARTBEAT_MS),
        '--election-timeout',
        String(ELECTION_MS),
        '--logger',
        'zap',
        '--log-level',
        'warn',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    if (child.pid === undefined) throw new Error(`could not start ${ETCD_BIN}`);
    live.add(child);
    m.child = child;
    m.stopping = false;
    m.exitedEarly = false;
    m.stderr = '';
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (text: string) => {
      m.stderr = (m.stderr + text).slice(-STDERR_BYTES_MAX);
    });
    m.exited = new Promise((resolve) => {
      child.once('close', () => {
        live.delete(child);
        if (m.child === child) m.child = undefined;
        if (!m.stopping) m.exitedEarly = true;
        resolve();
      });
    });
  }
}

/** Ends `until` at once: waiting longer cannot help. */
class StartFailed extends Error {}

function signal(child: ChildProcess, name: NodeJS.Signals): void {
  try {
    process.kill(child.pid!, name);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
  }
}
