/**
 * An appliance's registration in the fleet's etcd: the key /memfabric/v1/appliances/<id> holds
 * what a client needs to place shards on it (admin URL, NBD endpoint, capacity, free memory),
 * under a lease the appliance keeps alive. The key lives exactly as long as the appliance does:
 *
 *   start      grant a lease of `ttlSeconds`, put the key under it (in the background: the
 *              appliance serves at once, whether etcd answers or not);
 *   running    the etcd3 client renews the lease every ttl/3; every `refreshMs` the value is
 *              written again if free memory changed;
 *   lost       a lease that expired (etcd unreachable for longer than the TTL) is replaced by a
 *              new one and the key put again, retried every RETRY_MS while etcd is away;
 *   stop       the lease is revoked, so the key goes at once (a clean stop);
 *   crash      nothing renews the lease: etcd deletes the key after the TTL, and every watcher
 *              of the prefix (discovery, a controller) sees the delete.
 *
 * The key is written by a transaction that succeeds only when the key is absent or already
 * under this registration's lease: an appliance restarted with the same data directory (so the
 * same id) before its previous lease expired waits for that lease to go rather than overwrite
 * a key that etcd is about to delete; another appliance claiming the same id is logged.
 *
 * The id is stable per data directory (the file `appliance.id` in it, made on first start),
 * else random per process.
 *
 * etcd being unreachable never touches the data path: failures are logged at warn (the first
 * of a run, then at most every WARN_EVERY_MS) and retried; the appliance keeps serving.
 */
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Lease } from 'etcd3';
import type { Logger } from 'pino';
import type { Endpoint } from '../appliance/appliance.js';
import { invalidArgument } from '../errors.js';
import { EtcdConnection, EtcdKeys, type EtcdOptions } from './etcd.js';

export const REGISTRATION_TTL_SECONDS_DEFAULT = 5;
/** How often free memory is looked at (and written when it changed). */
export const REGISTRATION_REFRESH_MS_DEFAULT = 2000;
/** Wait between attempts while etcd is unreachable or the key is held by an older lease. */
const RETRY_MS = 1000;
/** Repeated failures are logged at most this often. */
const WARN_EVERY_MS = 30_000;
/** The file in a data directory that holds the appliance's id. */
export const APPLIANCE_ID_FILE = 'appliance.id';

/** What an appliance publishes about itself (the JSON value of its key). */
export interface ApplianceRecord {
  id: string;
  /** Admin API URL, as the appliance listens. */
  url: string;
  nbd: Endpoint;
  capacityBytes: number;
  freeBytes: number;
  /** Milliseconds since the epoch when this registration started. */
  startedAt: number;
}

/** What registration reads from the appliance (structural, so appliance.ts needs no import cycle). */
export interface RegisteredAppliance {
  readonly httpUrl: string;
  readonly nbdAddress: Endpoint;
  stats(): { memory: { capacityBytes: number; freeBytes: number } };
}

export interface RegistrationOptions extends EtcdOptions {
  /** Lease TTL in seconds (whole, at least 1). Default 5. */
  ttlSeconds?: number;
  refreshMs?: number;
  /** The id to register under (default: from the data directory, else random). */
  id?: string;
  dataDir?: string;
  logger?: Pick<Logger, 'warn' | 'info'>;
}

export type RegistrationState = 'registering' | 'registered' | 'stopped';

/** The appliance's id: `<dataDir>/appliance.id` (created on first use), else random. */
export async function applianceId(dataDir: string | undefined): Promise<string> {
  const fresh = randomBytes(8).toString('hex');
  if (dataDir === undefined) return fresh;
  const file = join(dataDir, APPLIANCE_ID_FILE);
  try {
    const stored = (await readFile(file, 'utf8')).trim();
    if (/^[A-Za-z0-9._-]{1,64}$/.test(stored)) return stored;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  await writeFile(file, `${fresh}\n`, { mode: 0o644 });
  return fresh;
}

export class ApplianceRegistration {
  readonly id: string;
  readonly key: string;
  readonly ttlSeconds: number;
  private readonly connection: EtcdConnection;
  private readonly appliance: RegisteredAppliance;
  private readonly refreshMs: number;
  private readonly logger: Pick<Logger, 'warn' | 'info'> | undefined;
  private readonly startedAt = Date.now();
  private lease: Lease | undefined;
  private leaseId: string | undefined;
  /** Leases this registration was granted before the current one (lost while etcd was away). */
  private readonly pastLeases = new Set<string>();
  /** The value last written under the current lease (undefined: the key must be put). */
  private written: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopping: Promise<void> | undefined;
  private failingSince: number | undefined;
  private lastWarnAt = 0;
  private registeredWaiters: Array<() => void> = [];
  private currentState: RegistrationState = 'registering';

  private constructor(appliance: RegisteredAppliance, id: string, options: RegistrationOptions) {
    const ttl = options.ttlSeconds ?? REGISTRATION_TTL_SECONDS_DEFAULT;
    if (!Number.isInteger(ttl) || ttl < 1) {
      throw invalidArgument(`the etcd lease TTL must be a whole number of seconds, 1 or more (got ${ttl})`);
    }
    this.ttlSeconds = ttl;
    this.refreshMs = options.refreshMs ?? Math.min(REGISTRATION_REFRESH_MS_DEFAULT, (ttl * 1000) / 2);
    this.connection = new EtcdConnection({
      ...options,
      // One attempt per tick: the tick itself is the retry, and stop() must not wait long.
      retryMs: 0,
    });
    this.appliance = appliance;
    this.id = id;
    this.key = EtcdKeys.appliance(id);
    this.logger = options.logger;
  }

  /**
   * Starts registering `appliance` (in the background) and returns at once. Throws only for
   * bad options (endpoints, TTL) or an unreadable id file.
   */
  static async start(
    appliance: RegisteredAppliance,
    options: RegistrationOptions,
  ): Promise<ApplianceRegistration> {
    const id = options.id ?? (await applianceId(options.dataDir));
    const registration = new ApplianceRegistration(appliance, id, options);
    registration.warnIfUnreachable();
    registration.schedule(0);
    return registration;
  }

  get state(): RegistrationState {
    return this.currentState;
  }

  /** Resolves once the key has been written, or the registration stopped without it. */
  registered(): Promise<void> {
    if (this.currentState === 'registered') return Promise.resolve();
    return new Promise((resolve) => this.registeredWaiters.push(resolve));
  }

  /** The record this appliance publishes now. */
  record(): ApplianceRecord {
    const { memory } = this.appliance.stats();
    return {
      id: this.id,
      url: this.appliance.httpUrl,
      nbd: { ...this.appliance.nbdAddress },
      capacityBytes: memory.capacityBytes,
      freeBytes: memory.freeBytes,
      startedAt: this.startedAt,
    };
  }

  /** Revokes the lease (the key goes at once) and closes the connection. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.currentState = 'stopped';
      clearTimeout(this.timer);
      await this.running?.catch(() => undefined);
      const lease = this.lease;
      this.lease = undefined;
      if (lease) {
        try {
          await lease.revoke({ deadline: Date.now() + this.connection.callTimeoutMs });
        } catch (error) {
          this.logger?.warn(
            { component: 'etcd', err: error, key: this.key },
            'could not revoke the registration lease; the key goes when it expires',
          );
        }
      }
      this.connection.close();
      for (const resolve of this.registeredWaiters.splice(0)) resolve();
    })();
    return this.stopping;
  }

  /**
   * An appliance that listens on loopback while etcd is elsewhere publishes addresses other
   * machines cannot reach: say so once (it still registers; a one-machine fleet is fine).
   */
  private warnIfUnreachable(): void {
    const loopback = (host: string) => /^(127\.|localhost$|\[?::1\]?$)/.test(host);
    const urlHost = new URL(this.appliance.httpUrl).hostname;
    const remoteEtcd = this.connection.endpoints.some((url) => !loopback(new URL(url).hostname));
    if (remoteEtcd && (loopback(urlHost) || loopback(this.appliance.nbdAddress.host))) {
      this.logger?.warn(
        { component: 'etcd', url: this.appliance.httpUrl, nbd: this.appliance.nbdAddress },
        'this appliance registers loopback addresses that other machines cannot reach; listen on a routable ' +
          'address (--http HOST:PORT --nbd HOST:PORT) for a fleet of several machines',
      );
    }
  }

  private schedule(ms: number): void {
    if (this.currentState === 'stopped') return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      // One tick at a time: a tick in progress schedules the next one when it ends.
      if (this.running) return;
      this.running = this.tick().finally(() => {
        this.running = undefined;
      });
    }, ms);
    this.timer.unref();
  }

  private async tick(): Promise<void> {
    let next = this.refreshMs;
    try {
      if (!this.lease) await this.grant();
      const value = JSON.stringify(this.record());
      if (value !== this.written) {
        const placed = await this.put(value);
        if (!placed) next = RETRY_MS;
      }
      if (this.failingSince !== undefined && this.written !== undefined) {
        this.logger?.info({ component: 'etcd', key: this.key }, 'registered in etcd again');
        this.failingSince = undefined;
      }
    } catch (error) {
      next = RETRY_MS;
      this.warn('etcd unreachable: the appliance is not registered; retrying (it keeps serving)', error);
    }
    this.schedule(next);
  }

  private async grant(): Promise<void> {
    const lease = this.connection.client.lease(this.ttlSeconds, {});
    // A grant that fails leaves `lease` lost; tick() catches and tries a new one.
    lease.on('lost', () => {
      // Only a lease that was granted is lost; a failed grant is tick()'s to handle.
      if (this.lease !== lease || this.leaseId === undefined) return;
      this.pastLeases.add(this.leaseId);
      this.lease = undefined;
      this.leaseId = undefined;
      this.written = undefined;
      if (this.currentState === 'registered') this.currentState = 'registering';
      this.warn(
        'the registration lease expired (etcd unreachable for longer than the TTL); registering again',
      );
      this.schedule(0);
    });
    this.lease = lease;
    this.leaseId = undefined;
    this.written = undefined;
    try {
      this.leaseId = await this.connection.run('grant the registration lease', () => lease.grant());
    } catch (error) {
      this.lease = undefined;
      lease.release();
      throw error;
    }
  }

  /** Writes the key if absent or ours; false when an older holder still has it. */
  private async put(value: string, heldBy?: string): Promise<boolean> {
    const key = Buffer.from(this.key);
    const lease = this.leaseId;
    if (lease === undefined) return false; // lost meanwhile: the next tick grants a new one
    const put = { request_put: { key, value: Buffer.from(value), lease } };
    const answer = await this.connection.run('register the appliance', () =>
      this.connection.client.kv.txn({
        compare: [{ key, target: 'Lease', result: 'Equal', lease: heldBy ?? lease }],
        success: [put],
        failure: [
          {
            request_txn: {
              compare: [{ key, target: 'Create', result: 'Equal', create_revision: 0 }],
              success: [put],
              failure: [{ request_range: { key } }],
            },
          },
        ],
      }),
    );
    const nested = answer.responses[0]?.response_txn;
    if (answer.succeeded || nested?.succeeded) {
      this.written = value;
      if (this.currentState === 'registering') {
        this.currentState = 'registered';
        this.logger?.info(
          { component: 'etcd', key: this.key, ttlSeconds: this.ttlSeconds },
          'registered in etcd',
        );
        for (const resolve of this.registeredWaiters.splice(0)) resolve();
      }
      return true;
    }
    const holder = nested?.responses[0]?.response_range.kvs[0];
    // Our own key under a lease we lost track of (etcd was away): take it over.
    if (holder && heldBy === undefined && this.pastLeases.has(holder.lease))
      return this.put(value, holder.lease);
    this.warn(
      `the key ${this.key} is held by another lease (${holder?.lease ?? '?'}): an earlier run of this appliance ` +
        'whose lease has not expired yet, or another appliance with the same id; waiting for it to go',
    );
    return false;
  }

  private warn(message: string, error?: unknown): void {
    const now = Date.now();
    if (this.failingSince === undefined) this.failingSince = now;
    else if (now - this.lastWarnAt < WARN_EVERY_MS) return;
    this.lastWarnAt = now;
    this.logger?.warn(
      {
        component: 'etcd',
        key: this.key,
        endpoints: this.connection.endpoints,
        ...(error ? { reason: (error as Error).message } : {}),
      },
      message,
    );
  }
}
